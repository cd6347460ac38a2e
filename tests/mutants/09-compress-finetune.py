"""Wrong implementations for labs/09-compress-finetune.ipynb, and the checks each must fail."""
from mutants import Mutant

_QUANTIZE = """def quantize_int4(w, group_size):
    out, d_in = w.shape
    groups = {groups}
    scale = {scale}
    {guard}
    codes = {codes}
    return codes.reshape(out, d_in), scale"""
_QUANTIZE_RIGHT = dict(
    groups="w.detach().float().reshape(out, d_in // group_size, group_size)",
    scale="groups.abs().amax(dim=-1) / 7",
    guard="scale = torch.where(scale > 0, scale, torch.ones_like(scale))",
    codes="torch.round(groups / scale[..., None]).clamp(-7, 7).to(torch.int8)")


def _quantize(**change: str) -> str:
    return _QUANTIZE.format(**{**_QUANTIZE_RIGHT, **change})


_LORA = """def lora_forward(x, base, A, B, alpha):
    r = A.shape[0]
    return {body}"""

_MERGE = """def merge_lora(base, A, B, alpha):
    merged = {copy}
    with torch.no_grad():
        merged.weight += {update}
    return merged"""
_MERGE_RIGHT = dict(copy="copy.deepcopy(base)", update="(B @ A) * (alpha / A.shape[0])")


def _merge(**change: str) -> str:
    return _MERGE.format(**{**_MERGE_RIGHT, **change})


_DPO = """def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = {loss}
    return loss, chosen_rewards.detach(), rejected_rewards.detach()"""

MUTANTS = [
    # group-wise int4
    Mutant("scale from the group mean of |w| instead of its max", "quantize_int4",
           _quantize(scale="groups.abs().mean(dim=-1) / 7"), frozenset({"quantize_int4"})),
    Mutant("rounds before scaling: round(w) / scale, truncated to int8", "quantize_int4",
           _quantize(codes="(torch.round(groups) / scale[..., None]).clamp(-7, 7).to(torch.int8)"),
           frozenset({"quantize_int4"})),
    Mutant("rounds ties up, floor(x + 0.5), instead of to even", "quantize_int4",
           _quantize(codes="torch.floor(groups / scale[..., None] + 0.5).clamp(-7, 7).to(torch.int8)"),
           frozenset({"quantize_int4"})),
    Mutant("16 levels: scale max |w| / 8 and codes clamped to -8..7", "quantize_int4",
           _quantize(scale="groups.abs().amax(dim=-1) / 8",
                     codes="torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int8)"),
           frozenset({"quantize_int4"})),
    Mutant("groups along the wrong axis: strided columns j, j + in/g, ... share a scale", "quantize_int4",
           _quantize(groups="w.detach().float().reshape(out, group_size, d_in // group_size).transpose(1, 2)"),
           frozenset({"quantize_int4"})),
    Mutant("no guard for an all-zero group: 0 / 0 gives NaN codes", "quantize_int4",
           _quantize(guard="pass"), frozenset({"quantize_int4"})),
    Mutant("computes in w's dtype: a float64 weight gives float64 scales", "quantize_int4",
           _quantize(groups="w.detach().reshape(out, d_in // group_size, group_size)"),
           frozenset({"quantize_int4"})),
    Mutant("dequantize tiles the scales (scale.repeat) instead of stretching each over its group",
           "dequantize_int4",
           "def dequantize_int4(codes, scale, group_size):\n"
           "    return codes.float() * scale.repeat(1, group_size)",
           frozenset({"dequantize_int4"})),
    # LoRA
    Mutant("LoRA without the alpha / r scale", "lora_forward", _LORA.format(body="base(x) + x @ A.T @ B.T"),
           frozenset({"lora_forward"})),
    Mutant("LoRA scaled by alpha instead of alpha / r", "lora_forward",
           _LORA.format(body="base(x) + (x @ A.T @ B.T) * alpha"), frozenset({"lora_forward"})),
    Mutant("merges into the base layer in place (a second merge adds the update again)", "merge_lora",
           _merge(copy="base"), frozenset({"merge_lora"})),
    Mutant("merge without the alpha / r scale", "merge_lora", _merge(update="B @ A"), frozenset({"merge_lora"})),
    # DPO
    Mutant("DPO without the reference log-ratio", "dpo_loss",
           _DPO.format(loss="-F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean()"),
           frozenset({"dpo_loss"})),
    Mutant("DPO with the sign of the margin flipped", "dpo_loss",
           _DPO.format(loss="-F.logsigmoid(rejected_rewards - chosen_rewards).mean()"), frozenset({"dpo_loss"})),
    Mutant("DPO through log(sigmoid(.)): -inf for a margin of -880", "dpo_loss",
           _DPO.format(loss="-torch.log(torch.sigmoid(chosen_rewards - rejected_rewards)).mean()"),
           frozenset({"dpo_loss"})),
    Mutant("DPO summed over pairs instead of averaged", "dpo_loss",
           _DPO.format(loss="-F.logsigmoid(chosen_rewards - rejected_rewards).sum()"), frozenset({"dpo_loss"})),
]
