"""labkit.compress.quant_sweep: variants by name, clear errors, and the saved run 09-quantization's live slice
(the fp32 model and int4 g192 re-scored on the first held-out window give the record's loss and KL)."""
import pytest
import torch

from labkit.compress.quant_sweep import VARIANTS, output_errors, variant
from labkit.compress.quantize import block_linears, linear_inputs, quantize
from tiny_llama import random_llama

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_variant_by_name_and_errors():
    model = random_llama()
    quantized, nbytes = variant(model, "int8 per channel")
    assert nbytes == sum(quantize(m.weight, 8).nbytes() for m in block_linears(model).values())
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(0))
    errors = output_errors(model, quantized, linear_inputs(model, ids))
    assert len(errors) == 14 and all(0 < e < 0.05 for e in errors.values())
    assert all(e == 0 for e in output_errors(model, model, linear_inputs(model, ids)).values())
    with pytest.raises(KeyError, match="no variant 'int3'; known: int8 per channel"):
        variant(model, "int3")
    with pytest.raises(ValueError, match="AWQ int4 g192 is calibrated: pass calibration windows"):
        variant(model, "AWQ int4 g192")
    assert {m for m, *_ in VARIANTS.values()} == {"rtn", "awq", "gptq"}


def test_saved_run_live_slice():
    from transformers import AutoTokenizer

    from labkit.compress.evaluate import evaluate, reference_logprobs
    from labkit.course import saved
    from labkit.gqa import heldout_windows
    from labkit.llama import Llama
    from labkit.models import ModelPackageMissing, smollm2_dir

    try:
        folder = smollm2_dir()
    except ModelPackageMissing as e:
        pytest.skip(str(e))
    rec = saved.load("09-quantization").record
    model = Llama.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    first = heldout_windows(tokenizer, rec["eval_windows"], rec["length"])[:1]
    reference = reference_logprobs(model, first)
    quantized, nbytes = variant(model, "int4 g192")
    scores = evaluate(quantized, first, reference)
    saved_variant = rec["variants"]["int4 g192"]
    assert nbytes == saved_variant["bytes"]
    assert abs(float(reference.losses[0]) - rec["variants"]["fp32"]["losses"][0]) < 1e-3
    assert abs(scores["losses"][0] - saved_variant["losses"][0]) < 1e-3
    assert abs(scores["kls"][0] - saved_variant["kls"][0]) < 1e-3
