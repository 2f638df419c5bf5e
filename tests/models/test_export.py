"""Export to transformers' Llava: the same logits and greedy generation in a process that never imports vlmkit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.cli import main as cli_main
from vlmkit.config.args import LoraArgs, ModelArgs
from vlmkit.data.records import Sample, Turn
from vlmkit.data.tokenize import tokenize_prompt
from vlmkit.models.build import build_vlm, load_vlm
from vlmkit.models.export import ExportError, check_llava_compatible, export_llava
from vlmkit.models.vlm import VLMConfig

PROMPT = "<image>\nWhat digit is this?"
NEW_TOKENS = 6

# Runs in a fresh interpreter: plain transformers only, as a user without vlmkit would load the export.
LOAD_SCRIPT = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

for d in json.loads(sys.argv[1]):
    processor = AutoProcessor.from_pretrained(d)
    model = LlavaForConditionalGeneration.from_pretrained(d).eval()
    image = Image.open(sys.argv[2])
    messages = [{"role": "user", "content": sys.argv[3]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=int(sys.argv[4]), do_sample=False)
    new = out[:, inputs["input_ids"].shape[1]:]
    save_file({"logits": logits.contiguous(), "input_ids": inputs["input_ids"].contiguous(),
               "generated": new.contiguous()}, d + "/reference.safetensors")
assert not [m for m in sys.modules if m.split(".")[0] == "vlmkit"], "the check must not import vlmkit"
print("loaded", type(processor).__name__, type(model).__name__)
"""

CASES = {
    # name: (vision tower, drop_cls_token, LoRA adapter saved and exported through the CLI)
    "clip_lora_default": ("vlmkit-tiny/clip-vision", None, True),
    "clip_full_strategy": ("vlmkit-tiny/clip-vision", False, False),
    "siglip": ("vlmkit-tiny/siglip-vision", None, False),
}


def vlmkit_reference(model, processor, image: Image.Image) -> dict[str, torch.Tensor]:
    """Prompt ids, logits (1, T, V) and greedy new tokens from the vlmkit model."""
    sample = Sample([Turn("user", PROMPT)], images=[image])
    spec = processor.spec
    ids, _ = tokenize_prompt(
        sample, processor.tokenizer, modality="image", num_media_tokens=spec.num_media_tokens
    )
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    media = processor.process_media([image])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids, mask, media).logits
        tok = processor.tokenizer
        generated = model.generate(
            input_ids, mask, media, max_new_tokens=NEW_TOKENS, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
    return {"input_ids": input_ids, "logits": logits, "generated": generated}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Three exported models, their vlmkit references, and the plain-transformers results."""
    root = tmp_path_factory.mktemp("export")
    image_path = root / "digit.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(image_path)
    image = Image.open(image_path).convert("RGB")
    results = {}
    for name, (tower, drop_cls, lora) in CASES.items():
        torch.manual_seed(0)
        args = ModelArgs(vision_tower=tower, language_model="vlmkit-tiny/llama", drop_cls_token=drop_cls)
        model, processor = build_vlm(args, LoraArgs(use_lora=lora, lora_r=4))
        with torch.no_grad():  # non-zero adapters, so that merging before export matters
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.normal_(0.0, 0.05)
        out = root / name
        if lora:
            ckpt = root / f"{name}_checkpoint"
            model.save_pretrained(ckpt)
            processor.save_pretrained(ckpt)
            model, processor = load_vlm(str(ckpt))  # what `vlmkit export` will see
            assert cli_main(["export", str(ckpt), str(out)]) == 0
        else:
            export_llava(model, processor, out)
        results[name] = {"vlmkit": vlmkit_reference(model, processor, image), "dir": out}
    dirs = json.dumps([str(r["dir"]) for r in results.values()])
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, dirs, str(image_path), PROMPT, str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded LlavaProcessor LlavaForConditionalGeneration" in proc.stdout
    for r in results.values():
        r["llava"] = load_file(str(r["dir"] / "reference.safetensors"))
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_export_gives_same_logits_and_generation_without_vlmkit(exports, name):
    ours, theirs = exports[name]["vlmkit"], exports[name]["llava"]
    assert torch.equal(theirs["input_ids"], ours["input_ids"])  # <image> expands to the same tokens
    assert theirs["logits"].shape == ours["logits"].shape
    torch.testing.assert_close(theirs["logits"], ours["logits"], atol=1e-4, rtol=1e-4)
    assert theirs["generated"].tolist() == ours["generated"].tolist()
    assert theirs["generated"].shape[1] >= 1


def test_export_config_records_the_llava_layout(exports):
    clip = json.loads((exports["clip_lora_default"]["dir"] / "config.json").read_text())
    siglip = json.loads((exports["siglip"]["dir"] / "config.json").read_text())
    full = json.loads((exports["clip_full_strategy"]["dir"] / "processor_config.json").read_text())
    assert clip["vision_feature_select_strategy"] == "default" and clip["vision_feature_layer"] == -2
    assert clip["image_token_index"] == 3 and clip["image_seq_length"] == 16
    assert siglip["vision_feature_select_strategy"] == "full"
    assert full["num_additional_image_tokens"] == 1 and full["vision_feature_select_strategy"] == "full"
    siglip_proc = json.loads((exports["siglip"]["dir"] / "processor_config.json").read_text())
    assert siglip_proc["num_additional_image_tokens"] == 0
    assert not list(exports["clip_lora_default"]["dir"].glob("*adapter*"))  # merged, not an adapter


def _config(**overrides) -> VLMConfig:
    base = dict(
        modality="image", encoder_model_type="clip_vision_model", connector="mlp2x_gelu",
        media_token_id=3, num_media_tokens=16,
    )  # fmt: skip
    return VLMConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"connector": "qformer"}, "connector 'qformer' has no Llava equivalent"),
        ({"connector": "linear"}, "connector 'linear' has no Llava equivalent"),
        ({"modality": "audio", "encoder_model_type": "wav2vec2"}, "audio .wav2vec2. encoder"),
        ({"encoder_model_type": "vit_mae"}, "ViTMAEModel would mask and shuffle"),
        ({"connector_kwargs": {"downsample": 2}}, "stacks tokens"),
    ],
)
def test_export_refuses_what_llava_cannot_represent(overrides, reason):
    check_llava_compatible(_config())  # the supported layout passes
    with pytest.raises(ExportError, match=reason):
        check_llava_compatible(_config(**overrides))


def test_cli_export_refuses_before_loading_and_writes_nothing(tmp_path, capsys):
    ckpt = tmp_path / "qformer_model"
    ckpt.mkdir()
    _config(connector="qformer").save(ckpt)  # no weights at all: the refusal must come first
    out = tmp_path / "export"
    assert cli_main(["export", str(ckpt), str(out)]) == 2
    assert "connector 'qformer' has no Llava equivalent" in capsys.readouterr().err
    assert not Path(out).exists()


def test_export_of_an_llm_with_tied_embeddings(tmp_path):
    """SmolLM2, Qwen2 and Gemma tie lm_head to the input embeddings: the export keeps them tied and equal."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    from vlmkit.models.model_paths import resolve_model_path

    tiny = resolve_model_path("vlmkit-tiny/llama")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny)
    config.tie_word_embeddings = True
    llm = AutoModelForCausalLM.from_config(config)
    assert llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    llm.save_pretrained(tmp_path / "tied-llm")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "tied-llm")
    args = ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model=str(tmp_path / "tied-llm"))
    model, processor = build_vlm(args)
    out = export_llava(model, processor, tmp_path / "llava")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True

    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert llava.lm_head.weight.data_ptr() == llava.get_input_embeddings().weight.data_ptr()
    image = Image.fromarray(np.random.RandomState(2).randint(0, 255, (32, 32, 3), dtype=np.uint8))
    ours = vlmkit_reference(model, processor, image)
    with torch.no_grad():
        theirs = llava(input_ids=ours["input_ids"], pixel_values=processor.process_media([image])).logits
    torch.testing.assert_close(theirs, ours["logits"], atol=1e-4, rtol=1e-4)
