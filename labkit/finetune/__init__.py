"""Part V, chapter 9: adapting a pretrained model by training few parameters (or few examples' worth of them).

    lora           LoRA: a frozen linear layer plus a trainable low-rank update, merged or not (Hu et al. 2021)
    qlora          LoRA on a frozen int4 base: the memory of weights and optimizer state (Dettmers et al. 2023)
    prompt_tuning  soft prompts (Lester et al. 2021) and per-layer key/value prefixes (Li & Liang 2021)
    lofit          LoFiT: offsets and scalings on a few attention heads only (Yin et al. 2024)
    adapters       the chapter's comparison: one task (country -> continent), the same budget for every method
    dpo            direct preference optimisation: the loss on preference pairs, a LoRA policy and its frozen
                   reference (Rafailov et al. 2023)
    reward         a Bradley-Terry reward model on a frozen body, and rejection sampling (best-of-n) with it
"""
