"""Small random labkit Llamas for tests that need a model but not SmolLM2's weights."""
import torch

from labkit.llama import Llama, LlamaConfig

# 4 query heads reading 2 key/value heads, like SmolLM2's grouping at a fraction of the size
SMALL = LlamaConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=256)


def random_llama(cfg: LlamaConfig = SMALL, seed: int = 0, std: float | None = None) -> Llama:
    """A seeded random model in eval mode: torch's default init, or every parameter ~ N(0, std^2) when std is
    given (larger weights make sharper, less uniform logits)."""
    torch.manual_seed(seed)
    model = Llama(cfg).eval()
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, std)
    return model
