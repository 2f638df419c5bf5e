"""Native transformers VLMs (`AutoModelForImageTextToText`: Qwen2/2.5/3-VL, LLaVA-hf, LLaVA-NeXT/OneVision,
SmolVLM/Idefics3, Gemma 3, PaliGemma) as vlmkit models: loading (`loading`), data through the model's own
processor with assistant-only labels (`encoding`, `collate`, `dataset`), trainable parts and LoRA (`parts`),
and tiny random-init stand-ins of each family for offline tests (`tiny`, `templates`).

Packing is not offered for these models yet; Qwen2-VL's M-RoPE needs per-sample 3-D positions.
"""
