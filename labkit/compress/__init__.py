"""Compressing models (chapter 9): making SmolLM2 smaller while measuring what that costs.

    quantize      integer quantization of weights: absmax and zero-point, per tensor, per channel, per group
    int8_decode   weight-only int8 decoding: chapter 5's fast decode step reading int8 codes + row scales
    gguf_blocks   GGUF's Q4_1 and Q8_0 block formats, decoded and encoded from scratch (the shipped weights)
    awq           activation-aware weight scaling before int4 quantization (Lin et al. 2023)
    gptq          error-compensated int4 quantization, column by column (Frantar et al. 2022)
    evaluate      perplexity and KL divergence to the fp32 model on the same held-out windows
    quant_sweep   the chapter's saved quantization run: eight quantized SmolLM2s scored, AWQ and GPTQ per layer
    distill       a tiny student trained on SmolLM2's soft targets (KL at temperature T) vs on the corpus tokens
    moe           a top-k gated mixture-of-experts feed-forward layer and its load-balancing loss
    prune         magnitude and Wanda (activation-aware) pruning, unstructured and N:M (2:4) (Sun et al. 2023)
    sparse_training  a feed-forward layer that keeps some hidden units, timed in training (Ma et al. 2024)
"""
