"""labkit.checks.gqa: the lab's checks pass the reference and fail plausible mistakes with a useful message."""
import pytest
import torch

from labkit import gqa
from labkit.checks.gqa import check_kv_head_of_query, check_pool_in_model, check_pool_kv_heads

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_reference_passes(capsys):
    check_kv_head_of_query(gqa.kv_head_of_query)
    check_pool_kv_heads(gqa.pool_kv_heads)
    assert "✓ kv_head_of_query passes" in capsys.readouterr().out


def test_stub_raises_not_implemented():
    def stub(*args):
        raise NotImplementedError("Exercise")
    with pytest.raises(NotImplementedError):
        check_kv_head_of_query(stub)
    with pytest.raises(NotImplementedError):
        check_pool_kv_heads(stub)


def test_cyclic_head_map_is_explained():
    with pytest.raises(AssertionError, match="cycles through the kv heads"):
        check_kv_head_of_query(lambda n, k: [h % k for h in range(n)])
    with pytest.raises(AssertionError, match="list of 9 ints"):
        check_kv_head_of_query(lambda n, k: None)


def test_sum_interleave_and_shape_mistakes_are_explained():
    def summed(w, n_kv, g):
        return gqa.pool_kv_heads(w, n_kv, g) * (n_kv // g)

    def interleaved(w, n_kv, g):
        d = w.shape[0] // n_kv
        return w.reshape(n_kv // g, g, d, -1).mean(0).reshape(g * d, -1)

    def columns(w, n_kv, g):
        return w.reshape(w.shape[0], g, -1).mean(2)

    with pytest.raises(AssertionError, match="times too large"):
        check_pool_kv_heads(summed)
    with pytest.raises(AssertionError, match="interleaved"):
        check_pool_kv_heads(interleaved)
    with pytest.raises(AssertionError, match="expected shape"):
        check_pool_kv_heads(columns)
    with pytest.raises(AssertionError, match="raised RuntimeError"):
        check_pool_kv_heads(lambda w, n, g: w.reshape(7, -1, 3))


@pytest.mark.slow  # loads SmolLM2
def test_pool_in_model():
    from labkit.llama import Llama

    model = Llama.from_pretrained()
    check_pool_in_model(gqa.pool_kv_heads, model)

    def interleaved(w, n_kv, g):
        d = w.shape[0] // n_kv
        return w.reshape(n_kv // g, g, d, -1).mean(0).reshape(g * d, -1)

    with pytest.raises(AssertionError, match="SmolLM2 again"):
        check_pool_in_model(interleaved, model)
    with pytest.raises(AssertionError, match="labkit's conversion"):
        check_pool_in_model(lambda w, n, g: gqa.pool_kv_heads(w, n, g) * (1 + (n == 3)), model)
    with pytest.raises(AssertionError, match="labkit's model"):
        check_pool_in_model(gqa.pool_kv_heads, torch.nn.Linear(2, 2))
