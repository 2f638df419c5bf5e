"""The `vlmkit` command line: generate on full and adapter checkpoints, eval, errors, and the subcommand table."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.cli import SUBCOMMANDS, build_parser, main
from vlmkit.config.args import LoraArgs, ModelArgs
from vlmkit.data.records import Sample, Turn
from vlmkit.eval.answers import generate_answers
from vlmkit.models.build import build_vlm, load_vlm

PROMPT = "What digit is this?"
MINIMAL_ARGS = {
    "generate": ["generate", "ckpt", "--image", "a.png", "--prompt", "x"],
    "export": ["export", "ckpt", "out"],
    "merge": ["merge", "ckpt", "out"],
    "eval": ["eval", "ckpt", "--data_path", "d.json"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A full and a LoRA-adapter tiny image checkpoint, and four PNG images."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    args = ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    for name, lora in (("full", False), ("adapter", True)):
        model, processor = build_vlm(args, LoraArgs(use_lora=lora, lora_r=4))
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def _api_answer(checkpoint, image_path) -> str:
    model, processor = load_vlm(str(checkpoint))
    sample = Sample([Turn("user", f"<image>\n{PROMPT}")], images=[str(image_path)])
    return generate_answers(model, processor, [sample], max_new_tokens=5)[0][0]


@pytest.mark.parametrize("name", ["full", "adapter"])
def test_generate_prints_the_models_answer(world, name, capsys):
    image = world / "img0.png"
    assert main(["generate", str(world / name), "--image", str(image), "--prompt", PROMPT,
                 "--max_new_tokens", "5"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip()
    assert printed == _api_answer(world / name, image)
    # An explicit placeholder in the prompt is used as given (same prompt, same answer).
    main(["generate", str(world / name), "--image", str(image), "--prompt", f"<image>\n{PROMPT}",
          "--max_new_tokens", "5"])  # fmt: skip
    assert capsys.readouterr().out.strip() == printed


def test_generate_with_the_wrong_modality_is_a_clear_error(world, capsys):
    code = main(["generate", str(world / "full"), "--audio", "clip.wav", "--prompt", PROMPT])
    assert code == 2
    assert "is an image model; pass --image" in capsys.readouterr().err


def test_eval_prints_and_writes_accuracy(world, tmp_path, capsys):
    # References: the model's own answer for two images, a wrong one for the other two -> exactly 0.5.
    records = []
    for i in range(4):
        answer = _api_answer(world / "full", world / f"img{i}.png")
        records.append({
            "id": str(i), "image": f"img{i}.png",
            "conversations": [{"from": "human", "value": f"<image>\n{PROMPT}"},
                              {"from": "gpt", "value": answer if i % 2 == 0 else answer + " not"}],
        })  # fmt: skip
    data = tmp_path / "eval.json"
    data.write_text(json.dumps(records))
    out_file = tmp_path / "metrics" / "eval.json"
    code = main(["eval", str(world / "full"), "--data_path", str(data), "--image_folder", str(world),
                 "--max_new_tokens", "5", "--output_file", str(out_file)])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["eval_accuracy"] == 0.5 and printed["eval_samples"] == 4
    assert json.loads(out_file.read_text())["eval_accuracy"] == 0.5


def test_eval_names_a_missing_data_file(world, tmp_path, capsys):
    code = main(["eval", str(world / "full"), "--data_path", str(tmp_path / "missing.json")])
    assert code == 2
    assert "missing.json" in capsys.readouterr().err


def test_subcommand_table_builds_the_parser():
    assert set(SUBCOMMANDS) >= {"generate", "export", "merge", "eval"}
    parser = build_parser()
    for name, argv in MINIMAL_ARGS.items():
        args = parser.parse_args(argv)
        assert args.command == name and args._run is SUBCOMMANDS[name][1]
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "ckpt", "--prompt", "x"])  # --image or --audio is required


def test_python_dash_m_vlmkit_lists_the_subcommands():
    proc = subprocess.run(
        [sys.executable, "-m", "vlmkit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("generate", "export", "merge", "eval"):
        assert name in proc.stdout
