"""Merging a LoRA adapter checkpoint into a full, self-contained vlmkit checkpoint (same logits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.cli import main as cli_main
from vlmkit.config.args import LoraArgs, ModelArgs
from vlmkit.models.build import build_vlm, load_vlm
from vlmkit.models.merge import merge_checkpoint, merge_lora
from vlmkit.training.freeze import set_trainable


def _inputs(processor):
    """A prompt with one image: input_ids (1, T), attention mask (1, T), pixel values (1, C, H, W)."""
    n = processor.spec.num_media_tokens
    tok = processor.tokenizer
    ids = tok("Which digit?", add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([[processor.media_token_id] * n + ids])
    rng = np.random.RandomState(1)
    image = Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8))
    return input_ids, torch.ones_like(input_ids), processor.process_media([image])


def _logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(*inputs).logits


@pytest.fixture(scope="module")
def adapter_checkpoint(tmp_path_factory):
    """A stage-2-style LoRA checkpoint (frozen encoder referenced by path) with non-zero adapters."""
    torch.manual_seed(0)
    args = ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    model, processor = build_vlm(args, LoraArgs(use_lora=True, lora_r=4))
    set_trainable(model, "instruct", log=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    out = tmp_path_factory.mktemp("merge") / "adapter"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_merged_checkpoint_gives_the_same_logits_and_stands_alone(adapter_checkpoint, tmp_path):
    adapter_model, processor = load_vlm(str(adapter_checkpoint))
    assert adapter_model.is_peft
    inputs = _inputs(processor)
    expected = _logits(adapter_model, inputs)

    out = tmp_path / "merged"
    assert cli_main(["merge", str(adapter_checkpoint), str(out)]) == 0
    assert (out / "encoder" / "model.safetensors").is_file()  # copied, no longer referenced by path
    assert (out / "language_model" / "model.safetensors").is_file()
    assert not (out / "language_model" / "adapter_config.json").exists()
    config = json.loads((out / "vlmkit_config.json").read_text())
    assert config["encoder_name_or_path"] is None
    assert config["lineage"][-1] == {"merged_from": str(adapter_checkpoint.resolve())}

    merged, _ = load_vlm(str(out))
    assert not merged.is_peft
    torch.testing.assert_close(_logits(merged, inputs), expected, atol=1e-5, rtol=1e-5)

    # The merge changed the LLM weights (the adapters were not zero), so the check above is not vacuous.
    base = load_vlm(str(adapter_checkpoint))[0]
    with base.language_model.disable_adapter():
        assert (_logits(base, inputs) - expected).abs().max() > 1e-3


def test_merge_lora_in_memory_is_a_no_op_without_adapters(adapter_checkpoint):
    model, processor = load_vlm(str(adapter_checkpoint))
    inputs = _inputs(processor)
    expected = _logits(model, inputs)
    merged = merge_lora(model)
    assert not merged.is_peft
    assert merge_lora(merged) is merged
    torch.testing.assert_close(_logits(merged, inputs), expected, atol=1e-5, rtol=1e-5)


def test_merge_refuses_a_full_checkpoint(adapter_checkpoint, tmp_path, capsys):
    full = merge_checkpoint(adapter_checkpoint, tmp_path / "full")
    assert cli_main(["merge", str(full), str(tmp_path / "again")]) == 2
    assert "holds no LoRA adapter" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_a_reward_models_adapter_merges_into_a_reward_model(adapter_checkpoint, tmp_path):
    """The score head goes along: the merged directory loads as a reward model and scores as the adapter did."""
    from vlmkit.rlhf.reward_model import RewardModel

    vlm, processor = load_vlm(str(adapter_checkpoint))
    torch.manual_seed(1)
    reward_dir = tmp_path / "reward_model"
    RewardModel(vlm).save_pretrained(reward_dir)
    processor.save_pretrained(reward_dir)
    adapter = RewardModel.from_pretrained(reward_dir)
    assert adapter.is_peft
    assert cli_main(["merge", str(reward_dir), str(tmp_path / "merged")]) == 0
    merged = RewardModel.from_pretrained(tmp_path / "merged")
    assert not merged.is_peft
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(merged(*inputs), adapter(*inputs), atol=1e-5, rtol=1e-5)
        with adapter.language_model.disable_adapter():  # the adapter matters to the score
            assert (adapter(*inputs) - merged(*inputs)).abs().max() > 1e-4
