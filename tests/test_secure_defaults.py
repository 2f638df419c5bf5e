"""Secure defaults: safetensors weights, no unsafe unpickling, no remote code by default, no leaked tokens."""

from __future__ import annotations

import ast
import logging
import secrets
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import tiny_loop
from tests.helpers.tiny_stage2 import make_image_data, stage2_argv

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "vlmkit").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")])
# Pickles accelerate writes into a checkpoint and reloads with torch.load(weights_only=True).
CHECKPOINT_PICKLES = {"optimizer.bin", "scaler.pt"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_sources_found():
    assert len(SOURCES) > 20 and any(p.name == "loop.py" for p in SOURCES)


def test_no_torch_load_without_weights_only_and_no_pickle_load():
    offenders = []
    for path in SOURCES:
        for call, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)[:80]}"
            if name in ("torch.load", "torch.serialization.load"):
                flag = _kw(call, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(where)
            elif name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(where)
            flag = _kw(call, "weights_only")
            if isinstance(flag, ast.Constant) and flag.value is False:
                offenders.append(where)
    assert not offenders, "unsafe deserialisation:\n" + "\n".join(offenders)


def test_trust_remote_code_is_never_on_by_default():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for call, _name in _calls(tree):
            value = _kw(call, "trust_remote_code")
            if isinstance(value, ast.Constant) and value.value is True:
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}: trust_remote_code=True")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for arg, default in pairs:
                    if arg.arg == "trust_remote_code" and not (
                        isinstance(default, ast.Constant) and default.value is False
                    ):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} default")
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "trust_remote_code":
                default = node.value.args[0] if isinstance(node.value, ast.Call) else node.value
                if not (isinstance(default, ast.Constant) and default.value is False):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: config field default")
    for path in sorted((ROOT / "recipes" / "configs").glob("*.yaml")):
        if (yaml.safe_load(path.read_text()) or {}).get("trust_remote_code") is True:
            offenders.append(f"{path.relative_to(ROOT)}: trust_remote_code: true")
    assert not offenders, "remote code enabled by default:\n" + "\n".join(offenders)


def test_resume_loads_nothing_with_weights_only_false(tmp_path, monkeypatch):
    out = tmp_path / "run"
    tiny_loop.run(tiny_loop.config(out, max_steps=4, save_steps=2))
    checkpoint = out / "checkpoint-2"
    assert not list(checkpoint.glob("custom_checkpoint_*")), "objects pickled for weights_only=False loading"
    real_load, seen = torch.load, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cfg = tiny_loop.config(out, max_steps=4, save_steps=2)
    cfg.resume_from_checkpoint = str(checkpoint)
    assert tiny_loop.run(cfg).global_step == 4
    assert seen and all(flag is True for flag in seen), seen


@pytest.mark.slow
def test_stage2_run_writes_safetensors_and_never_the_hub_token(tmp_path, monkeypatch, capfd, caplog, recipe):
    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    data = make_image_data(tmp_path / "data", n=8)
    out = tmp_path / "out"
    main = recipe("llava_stage2").main
    main(stage2_argv(data, out, max_steps=4, save_steps=2, save_total_limit=5, report_to="tensorboard"))

    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "checkpoint_complete.json" for p in files)
    assert any("tfevents" in p.name for p in files)  # tracker logs are grepped too
    for path in files:
        assert token.encode() not in path.read_bytes(), f"token written to {path}"
    captured = capfd.readouterr()
    assert token not in captured.out and token not in captured.err
    assert all(token not in record.getMessage() for record in caplog.records)

    weights = [p for p in files if p.suffix == ".safetensors"]
    assert any(p.parent == out for p in weights) and any("checkpoint-" in str(p) for p in weights)
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    allowed = [
        p.parent.name.startswith("checkpoint-")
        and (p.name in CHECKPOINT_PICKLES or p.name.startswith("random_states_"))
        for p in pickles
    ]
    unexpected = [p for p, ok in zip(pickles, allowed) if not ok]
    assert not unexpected, f"pickled weights or state outside the checkpoint allow-list: {unexpected}"


@pytest.mark.parametrize("field", ["trust_remote_code"])
def test_config_defaults_are_safe(field):
    from vlmkit.config.recipes import Stage1Config, Stage2Config

    assert getattr(Stage1Config(), field) is False and getattr(Stage2Config(), field) is False
