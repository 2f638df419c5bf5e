"""Native transformers VLMs (`AutoModelForImageTextToText`: Qwen2/2.5/3-VL, LLaVA-hf, LLaVA-NeXT/OneVision,
SmolVLM/Idefics3, Gemma 3, PaliGemma) as vlmkit models: loading (`loading`), data through the model's own
processor with assistant-only labels (`encoding`, `collate`, `dataset`), trainable parts and LoRA (`parts`),
padding-free packing with per-sample (M-RoPE) positions where it is exact (`packing`), and tiny random-init
stand-ins of each family for offline tests (`tiny`, `templates`).
"""
