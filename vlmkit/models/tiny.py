"""Tiny random-init checkpoints of the real architectures, built offline and loaded with `from_pretrained`.

`vlmkit-tiny/<name>` in any model field resolves to a directory under the tiny-world cache that is built on
first use (a few hundred milliseconds) and then loaded exactly as a downloaded checkpoint would be.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

TINY_PREFIX = "vlmkit-tiny/"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<image>", "<audio>"]
_CORPUS = [
    "What digit is this? Which number is shown in the image? Name the digit in the picture.",
    "A handwritten digit. An image of the number. Describe the image briefly. The digit is",
    "zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 yes no even odd",
    "Which digit is spoken? the spoken digit a recording of someone saying Transcribe the audio.",
    "You are a helpful assistant. user assistant system Is it an even number? The answer is",
]


def tiny_cache_dir() -> Path:
    """Where tiny checkpoints live (override with VLMKIT_TINY_DIR)."""
    return Path(os.environ.get("VLMKIT_TINY_DIR", Path.home() / ".cache" / "vlmkit" / "tiny"))


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with a ChatML chat template and `<image>` / `<audio>` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
        extra_special_tokens={"image_token": "<image>", "audio_token": "<audio>"},
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _llm(arch: str, vocab_size: int, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def _build_llm(arch: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = build_tokenizer()
        model = _llm(arch, len(tokenizer), tokenizer)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        # AutoTokenizer may load the architecture's own tokenizer class, which can add tokens (Qwen2's adds
        # <|endoftext|>); size the embeddings for the tokenizer that users of this directory will get.
        loaded = len(AutoTokenizer.from_pretrained(out))
        if loaded != len(tokenizer):
            model.resize_token_embeddings(loaded, mean_resizing=False)
            model.save_pretrained(out)

    return build


def _build_clip_vision(out: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, projection_dim=64,
    )  # fmt: skip
    CLIPVisionModel(config).save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        out
    )


def _build_siglip_vision(out: Path) -> None:
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4,
    )  # fmt: skip
    SiglipVisionModel(config).save_pretrained(out)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)


def _build_wav2vec2(out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(64, 64, 64, 64, 64), conv_stride=(5, 4, 4, 4, 4), conv_kernel=(10, 4, 4, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True, codevector_dim=32, proj_codevector_dim=32, num_codevectors_per_group=32,
        num_codevector_groups=2, mask_time_length=4, vocab_size=32,
    )  # fmt: skip
    Wav2Vec2Model(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)


TINY_MODELS: dict[str, Callable[[Path], None]] = {
    "llama": _build_llm("llama"),
    "qwen2": _build_llm("qwen2"),
    "clip-vision": _build_clip_vision,
    "siglip-vision": _build_siglip_vision,
    "wav2vec2": _build_wav2vec2,
}


def build_tiny(name: str, out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Build the tiny checkpoint `name` (atomically) and return its directory; reuse it if present."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model '{name}'; valid: {', '.join(TINY_MODELS)}")
    out = Path(out_dir) if out_dir else tiny_cache_dir() / name
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        TINY_MODELS[name](tmp)
    (tmp / ".complete").write_text("ok\n")
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
