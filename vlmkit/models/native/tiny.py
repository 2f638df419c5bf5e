"""Tiny random-init stand-ins of the native transformers VLM families, saved with a working processor.

`build_tiny_native(family)` writes a directory that `AutoModelForImageTextToText.from_pretrained` and
`AutoProcessor.from_pretrained` load offline, exactly as they load a released checkpoint: the family's own
config, model and processor classes at small widths (hidden 64, 2 layers, 32-pixel images, 8-pixel patches),
a byte-level BPE tokenizer trained on the spot with the family's special tokens, and the family's chat
template (`vlmkit.models.native.templates`). Built once per cache directory, like `vlmkit.models.tiny`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from vlmkit.models.native.loading import image_only, load_processor, save_processor
from vlmkit.models.native.templates import TEMPLATES
from vlmkit.models.tiny import _CORPUS, tiny_cache_dir

NATIVE_PREFIX = "vlmkit-tiny/native-"
_DIGITS = [
    "The digit is 0 1 2 3 4 5 6 7 8 9. What digit is this? Read the digit in the image. USER ASSISTANT"
]
_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=1024, tie_word_embeddings=False,
)  # fmt: skip
_VISION = dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4)  # fmt: skip


# One patch per 32-pixel image, wide: the image reaches the LM as one rich token (fast to learn from).
_ONE_TOKEN_VISION = {**_VISION, "patch_size": 32, "hidden_size": 128, "intermediate_size": 256}


def _tokenizer(bos: str | None, eos: str, pad: str, specials: list[str], named: dict[str, str]):
    """A byte-level BPE tokenizer with `specials` (bos/eos/pad included) and named extra special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    ordered = list(dict.fromkeys([pad, eos, *([bos] if bos else []), *specials, *named.values()]))
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=ordered, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator((_CORPUS + _DIGITS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, extra_special_tokens=named
    )


def _ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _text_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip


def _llava_like(family: str):
    """llava (CLIP + Llama), llava_next (CLIP + Llama, any-res) and llava_onevision (SigLIP + Qwen2)."""
    import transformers as tf

    tokenizer = _tokenizer("<s>", "</s>", "<pad>", ["<image>"], {"image_token": "<image>"})
    if family == "llava_onevision":
        tokenizer = _tokenizer(None, "<|im_end|>", "<|endoftext|>", ["<|im_start|>", "<image>", "<video>"],
                               {"image_token": "<image>", "video_token": "<video>"})  # fmt: skip
    image_id, pinpoints = tokenizer.convert_tokens_to_ids("<image>"), [[32, 32], [32, 64], [64, 32], [64, 64]]
    text = {**_TEXT, **_text_ids(tokenizer)}
    if family == "llava":
        config = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**_ONE_TOKEN_VISION).to_dict(),
            text_config=tf.LlamaConfig(**text).to_dict(),
            image_token_index=image_id,
        )
        images = tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = tf.LlavaProcessor(images, tokenizer, patch_size=32, num_additional_image_tokens=1,
                                      vision_feature_select_strategy="default")  # fmt: skip
    elif family == "llava_next":
        config = tf.LlavaNextConfig(vision_config=tf.CLIPVisionConfig(**_VISION).to_dict(),
                                    text_config=tf.LlamaConfig(**text).to_dict(), image_token_index=image_id,
                                    image_grid_pinpoints=pinpoints)  # fmt: skip
        images = tf.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                               image_grid_pinpoints=pinpoints)  # fmt: skip
        processor = tf.LlavaNextProcessor(images, tokenizer, patch_size=8, num_additional_image_tokens=1,
                                          vision_feature_select_strategy="default")  # fmt: skip
    else:
        config = tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(**_VISION).to_dict(), text_config=tf.Qwen2Config(**text).to_dict(),
            image_token_index=image_id, video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints, vision_feature_layer=-1, vision_feature_select_strategy="full",
        )  # fmt: skip
        images = tf.LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
        )
        with image_only(tf.LlavaOnevisionProcessor):
            processor = tf.LlavaOnevisionProcessor(images, tokenizer, num_image_tokens=16,
                                                   vision_feature_select_strategy="full")  # fmt: skip
    return config, processor


def _qwen2_vl(family: str):
    import transformers as tf

    tokenizer = _tokenizer(
        None, "<|im_end|>", "<|endoftext|>",
        ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )  # fmt: skip
    image_id, video_id, start_id = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>")
    text = {**_TEXT, **_text_ids(tokenizer), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                "mrope_section": [2, 3, 3]}}  # fmt: skip
    vision = dict(
        depth=2, hidden_size=64, num_heads=4, patch_size=16, spatial_merge_size=2, temporal_patch_size=2
    )
    ids = dict(image_token_id=image_id, video_token_id=video_id, vision_start_token_id=start_id)
    if family == "qwen2_vl":
        vision = {**vision, "embed_dim": 128}
        config_cls, processor_cls = tf.Qwen2VLConfig, tf.Qwen2VLProcessor
    elif family == "qwen2_5_vl":
        vision = {**vision, "out_hidden_size": 64, "intermediate_size": 128, "window_size": 32,
                  "fullatt_block_indexes": [1]}  # fmt: skip
        config_cls, processor_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLProcessor
    else:  # Qwen3-VL: interleaved M-RoPE, learned vision positions, deep-stacked features from block 0
        vision = {**vision, "out_hidden_size": 64, "intermediate_size": 128, "num_position_embeddings": 16,
                  "deepstack_visual_indexes": [0]}  # fmt: skip
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
        text.pop("tie_word_embeddings")
        ids = {**ids, "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
               "tie_word_embeddings": False}  # fmt: skip
        config_cls, processor_cls = tf.Qwen3VLConfig, tf.Qwen3VLProcessor
    config = config_cls(text_config=text, vision_config=vision, **ids)
    images = tf.Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                         size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})  # fmt: skip
    with image_only(processor_cls):
        return config, processor_cls(images, tokenizer)


def _idefics3(family: str):
    import transformers as tf

    tokenizer = _tokenizer(
        "<|im_start|>", "<end_of_utterance>", "<|endoftext|>",
        ["<fake_token_around_image>", "<image>", "<global-img>"], {"image_token": "<image>"},
    )  # fmt: skip
    config = tf.Idefics3Config(
        vision_config=tf.Idefics3VisionConfig(**_VISION).to_dict(), text_config=tf.LlamaConfig(**_TEXT,
        **_text_ids(tokenizer)).to_dict(), scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    images = tf.Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    return config, tf.Idefics3Processor(images, tokenizer, image_seq_len=4)


def _paligemma(family: str):
    import transformers as tf

    tokenizer = _tokenizer("<bos>", "<eos>", "<pad>", ["<image>"], {"image_token": "<image>"})
    text = {**_TEXT, **_text_ids(tokenizer)}
    config = tf.PaliGemmaConfig(
        vision_config=tf.SiglipVisionConfig(**_VISION, projection_dim=64).to_dict(),
        text_config=tf.GemmaConfig(**text).to_dict(), projection_dim=64,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    images = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    images.image_seq_length = 16
    return config, tf.PaliGemmaProcessor(images, tokenizer)


def _gemma3(family: str):
    import transformers as tf

    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = _tokenizer("<bos>", "<eos>", "<pad>", ["<start_of_turn>", "<end_of_turn>"], named)
    boi, eoi, image = _ids(tokenizer, *named.values())
    text = {
        **_TEXT,
        **_text_ids(tokenizer),
        "sliding_window": 64,
        "eos_token_id": _ids(tokenizer, "<eos>", "<end_of_turn>"),
    }
    config = tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(**text).to_dict(), vision_config=tf.SiglipVisionConfig(**_VISION).to_dict(),
        mm_tokens_per_image=4, boi_token_index=boi, eoi_token_index=eoi, image_token_index=image,
    )  # fmt: skip
    images = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    return config, tf.Gemma3Processor(images, tokenizer, image_seq_length=4)


BUILDERS: dict[str, Callable] = {
    "llava": _llava_like,
    "llava_next": _llava_like,
    "llava_onevision": _llava_like,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_vl,
    "qwen3_vl": _qwen2_vl,
    "idefics3": _idefics3,
    "paligemma": _paligemma,
    "gemma3": _gemma3,
}
NATIVE_FAMILIES = tuple(BUILDERS)


def _write(family: str, out: Path) -> None:
    from transformers import AutoModelForImageTextToText

    config, processor = BUILDERS[family](family)
    processor.chat_template = TEMPLATES[family]
    save_processor(processor, out)
    # Size the embeddings for the tokenizer users of this directory get (a processor may add tokens).
    vocab = len(load_processor(out).tokenizer)
    text_config = config.get_text_config()
    text_config.vocab_size = max(vocab, text_config.vocab_size)
    model = AutoModelForImageTextToText.from_config(config)
    tok = processor.tokenizer
    eos = getattr(text_config, "eos_token_id", None) or tok.eos_token_id
    model.generation_config.update(
        pad_token_id=tok.pad_token_id, eos_token_id=eos, bos_token_id=tok.bos_token_id
    )
    model.save_pretrained(out)


def build_tiny_native(family: str, out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Build (atomically, once) the tiny stand-in of `family` and return its directory."""
    if family not in BUILDERS:
        raise ValueError(f"unknown native VLM family '{family}'; valid: {', '.join(BUILDERS)}")
    out = Path(out_dir) if out_dir else tiny_cache_dir() / f"native-{family}"
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".native-{family}-", dir=out.parent))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _write(family, tmp)
    (tmp / ".complete").write_text("ok\n")
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_native_model_path(name_or_path: str | None) -> str | None:
    """Map `vlmkit-tiny/native-<family>` to its built directory; anything else is returned unchanged."""
    if name_or_path and name_or_path.startswith(NATIVE_PREFIX):
        return str(build_tiny_native(name_or_path[len(NATIVE_PREFIX) :]))
    return name_or_path
