"""Chapter 9's saved quantization run (labkit.course.saved `09-quantization`): SmolLM2 quantized eight ways,
each scored on the same held-out windows against the fp32 model, and AWQ and GPTQ measured layer by layer.

    VARIANTS   name -> how it is made (round-to-nearest at some granularity, AWQ, GPTQ)
    run        the whole sweep -> (record, {}): per-window losses and KL of every variant, bytes, per-matrix
               relative output errors; `python -m labkit.course save 09-quantization` writes it
    variant    one variant of a model by name (what the notebook re-runs live)
    output_errors  ||X (W_q - W)^T|| / ||X W^T|| of every block matrix for activations X it reads
"""
from __future__ import annotations

import torch
from torch import nn

from .awq import awq_model
from .evaluate import evaluate, reference_logprobs
from .gptq import gptq_model
from .quantize import block_linears, linear_inputs, quantize_model

# name -> (method, bits, group_size, symmetric); calibrated methods use CALIBRATION windows of training text
VARIANTS: dict[str, tuple[str, int, int | None, bool]] = {
    "int8 per channel": ("rtn", 8, None, True),
    "int4 per channel": ("rtn", 4, None, False),
    "int4 g192": ("rtn", 4, 192, False),
    "int4 g64": ("rtn", 4, 64, False),
    "int4 g32": ("rtn", 4, 32, False),
    "AWQ int4 g192": ("awq", 4, 192, False),
    "GPTQ int4 g192": ("gptq", 4, 192, False),
    "AWQ int4 per channel": ("awq", 4, None, False),
    "GPTQ int4 per channel": ("gptq", 4, None, False),
}
EVAL_WINDOWS, CALIBRATION_WINDOWS, LENGTH = 16, 2, 257   # 4,096 scored tokens; 512 calibration tokens


def variant(model: nn.Module, name: str, calibration: torch.Tensor | None = None) -> tuple[nn.Module, int]:
    """(the quantized copy of model, bytes of its block matrices) for VARIANTS[name]."""
    if name not in VARIANTS:
        raise KeyError(f"no variant {name!r}; known: {', '.join(VARIANTS)}")
    method, bits, group, symmetric = VARIANTS[name]
    if method == "rtn":
        return quantize_model(model, bits, "group" if group else "channel", group, symmetric)
    if calibration is None:
        raise ValueError(f"{name} is calibrated: pass calibration windows")
    if method == "awq":
        quantized, nbytes, _ = awq_model(model, calibration, bits, group, symmetric)
        return quantized, nbytes
    return gptq_model(model, calibration, bits, group, symmetric)


@torch.no_grad()
def output_errors(model: nn.Module, quantized: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative output error ||X (W_q - W)^T|| / ||X W^T|| of each block matrix, X = inputs[name]."""
    ours, theirs = block_linears(model), block_linears(quantized)
    out = {}
    for name, x in inputs.items():
        w, w_q = ours[name].weight, theirs[name].weight
        out[name] = float((x @ (w_q - w).T).norm() / (x @ w.T).norm())
    return out


def run(n_eval: int = EVAL_WINDOWS, n_calibration: int = CALIBRATION_WINDOWS, length: int = LENGTH
        ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The sweep, one thread (as the notebook). Returns (record, {})."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from ..gqa import heldout_windows
    from ..llama import Llama
    from ..models import smollm2_dir, smollm2_gguf
    from .gguf_blocks import decode_tensor, encode_q4_1, encode_q8_0, read_gguf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Llama.from_pretrained()
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
        windows = heldout_windows(tokenizer, n_eval, length)
        calibration = heldout_windows(tokenizer, n_calibration, length, split="train")
        reference = reference_logprobs(model, windows)
        fp32 = evaluate(model, windows, reference)
        linears = block_linears(model)
        _, tensors = read_gguf(smollm2_gguf())
        # the weights were decoded from Q4_1 (Q8_0 for the embedding): encoding them again gives the file's bytes?
        same = sum(torch.equal((encode_q4_1 if t.kind == "Q4_1" else encode_q8_0)(decode_tensor(t)), t.raw)
                   for t in tensors.values() if t.kind in ("Q4_1", "Q8_0"))
        record = {"eval_windows": n_eval, "calibration_windows": n_calibration, "length": length,
                  "block_params": sum(m.weight.numel() for m in linears.values()),
                  "embedding_params": model.embed_tokens.weight.numel(),
                  "q4_1_bytes": sum(t.raw.numel() for t in tensors.values() if t.kind == "Q4_1"),
                  "file_tensor_bytes": {kind: sum(t.raw.numel() for t in tensors.values() if t.kind == kind)
                                        for kind in ("Q4_1", "Q8_0", "F32")},
                  "variants": {"fp32": {"bytes": 4 * sum(m.weight.numel() for m in linears.values()),
                                        **{k: fp32[k] for k in ("losses", "kls")}}},
                  "reencoded_identical": same, "layer_errors": {}, "awq_alphas": {}}
        heldout_inputs = linear_inputs(model, windows[:1])
        calibration_inputs = linear_inputs(model, calibration)
        for name in tqdm(VARIANTS, desc="variants"):
            method, bits, group, symmetric = VARIANTS[name]
            if method == "awq":   # as `variant`, keeping the alpha chosen for each input
                quantized, nbytes, record["awq_alphas"][name] = awq_model(model, calibration, bits, group, symmetric)
            else:
                quantized, nbytes = variant(model, name, calibration)
            scores = evaluate(quantized, windows, reference)
            record["variants"][name] = {"bytes": nbytes, "losses": scores["losses"], "kls": scores["kls"]}
            if method != "rtn" or bits == 4 and group in (None, 192):   # the ones AWQ and GPTQ compete with
                record["layer_errors"][name] = {"heldout": output_errors(model, quantized, heldout_inputs),
                                                "calibration": output_errors(model, quantized, calibration_inputs)}
            del quantized
        return record, {}
    finally:
        torch.set_num_threads(threads)
