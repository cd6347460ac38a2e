"""Part V, chapter 9: adapting a pretrained model by training few parameters (or few examples' worth of them).

    lora           LoRA: a frozen linear layer plus a trainable low-rank update, merged or not (Hu et al. 2021)
    qlora          LoRA on a frozen int4 base: the memory of weights and optimizer state (Dettmers et al. 2023)
    prompt_tuning  soft prompts (Lester et al. 2021) and per-layer key/value prefixes (Li & Liang 2021)
    lofit          LoFiT: offsets and scalings on a few attention heads only (Yin et al. 2024)
    adapters       the chapter's comparison: one task (country -> continent), the same budget for every method
    dpo            direct preference optimisation: the loss on preference pairs, a LoRA policy and its frozen
                   reference (Rafailov et al. 2023)
    reward         a Bradley-Terry reward model on a frozen body, and rejection sampling (best-of-n) with it
    chat_formats   Alpaca and ShareGPT records -> chat messages, with errors naming the bad record and field
    tool_data      seven tool schemas, a minimal JSON Schema validator, the seeded tool-call data set and its split
    sft            supervised fine-tuning for tool calls: chat-template rendering, the assistant-only loss mask,
                   LoRA training with a shared prefix, greedy evaluation, the saved adapter (load_tool_adapter)
"""
