"""push_to_hub / check_hub_access against a recording Hub server, with the real huggingface_hub client."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers.recording_hub import RecordingHub, SilentServer, closed_port_url
from vlmkit.hub import push as push_module
from vlmkit.hub.model_card import write_model_card
from vlmkit.hub.push import HubAccessError, check_hub_access, files_to_upload, push_to_hub

REPO = "tester/digits-llava"


def make_run_dir(root: Path) -> Path:
    """A stage-2 output directory as a recipe leaves it, including things that must not be uploaded."""
    out = root / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "runs" / "Nov27").mkdir(parents=True)
    (out / "adapter_model.safetensors").write_bytes(
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(64))
    )
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (out / "config.yaml").write_text("stage: sft\nlr: 0.0002\n")
    (out / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.97}))
    (out / "optimizer.pt").write_bytes(b"optimizer state")
    (out / "training_args.bin").write_bytes(b"pickled args")
    (out / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"old weights")
    (out / "checkpoint-10" / "optimizer.pt").write_bytes(b"old optimizer")
    (out / "runs" / "Nov27" / "events.out.tfevents.123.host").write_bytes(b"tb")
    write_model_card(
        out,
        title="digits-llava",
        base_encoder="openai/clip-vit-base-patch32",
        base_language_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        connector="mlp2x_gelu",
        stage="sft",
        parent_checkpoint="outputs/stage1",
        data={"name": "digits", "fingerprint": "sha256:abc123"},
        metrics={"eval_accuracy": 0.97},
        lineage=[{"stage": "connector", "checkpoint": "outputs/stage1"}],
        usage="from vlmkit.models import load\nmodel = load('tester/digits-llava')",
        is_adapter=True,
    )
    return out


EXPECTED_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.yaml",
    "metrics.json",
}


@pytest.mark.parametrize("private", [True, False])
def test_push_uploads_the_model_and_honours_private(
    recording_hub, fake_token, tmp_path, caplog, capsys, private
):
    run = make_run_dir(tmp_path)

    url = push_to_hub(run, REPO, private=private, token=fake_token, endpoint=recording_hub.url)

    assert url == f"{recording_hub.url}/{REPO}"
    (create,) = recording_hub.find("POST", "/api/repos/create")
    assert create.json()["name"] == "digits-llava"
    assert create.json()["organization"] == "tester"
    assert create.json()["visibility"] == ("private" if private else "public")

    committed = recording_hub.committed_files()
    # No checkpoint-*/, optimizer state, training_args.bin or TensorBoard runs.
    assert set(committed) == EXPECTED_FILES
    assert committed["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    assert committed["README.md"].startswith(b"---\n")
    assert b"library_name: peft" in committed["README.md"]

    # The token travels in the authorization header and nowhere else.
    assert recording_hub.requests, "no request reached the recording hub"
    for req in recording_hub.requests:
        assert req.headers.get("authorization") == f"Bearer {fake_token}", req.path
        assert fake_token not in req.path
        assert fake_token.encode() not in req.body
        others = {k: v for k, v in req.headers.items() if k != "authorization"}
        assert fake_token not in json.dumps(others)
    for path in run.rglob("*"):
        if path.is_file():
            assert fake_token.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert fake_token not in captured.out + captured.err
    assert "Pushed 5 files" in caplog.text  # logs were captured (DEBUG level, huggingface_hub included) ...
    assert fake_token not in caplog.text  # ... and hold no token


def test_push_reads_token_from_environment(recording_hub, fake_token, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", fake_token)
    run = make_run_dir(tmp_path)
    assert push_to_hub(run, REPO, endpoint=recording_hub.url).endswith(REPO)
    assert recording_hub.find("POST", "/commit/")


def test_push_refuses_a_file_that_contains_the_token(recording_hub, fake_token, tmp_path):
    run = make_run_dir(tmp_path)
    (run / "config.yaml").write_text(f"hub_token: {fake_token}\n")
    with pytest.raises(HubAccessError, match="contains your Hugging Face token") as info:
        push_to_hub(run, REPO, token=fake_token, endpoint=recording_hub.url)
    assert fake_token not in str(info.value)
    assert recording_hub.requests == []


def test_push_with_rejected_token_fails_cleanly(recording_hub, fake_token, tmp_path):
    run = make_run_dir(tmp_path)
    bad = "hf_" + "WrongToken" * 3
    with pytest.raises(HubAccessError, match="401") as info:
        push_to_hub(run, REPO, token=bad, endpoint=recording_hub.url)
    assert bad not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not recording_hub.find("POST", "/commit/")


def test_push_offline_fails_before_any_request(recording_hub, fake_token, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE"):
        push_to_hub(make_run_dir(tmp_path), REPO, token=fake_token, endpoint=recording_hub.url)
    assert recording_hub.requests == []


def test_files_to_upload_applies_allow_and_ignore_patterns(tmp_path):
    run = make_run_dir(tmp_path)
    assert set(files_to_upload(run)) == EXPECTED_FILES
    assert files_to_upload(run, allow_patterns=["*.safetensors"]) == ["adapter_model.safetensors"]
    assert "checkpoint-10/optimizer.pt" in files_to_upload(run, ignore_patterns=())


def test_check_hub_access_accepts_token_argument_env_and_stored_login(
    recording_hub, fake_token, hf_home, monkeypatch
):
    check_hub_access(REPO, token=fake_token, endpoint=recording_hub.url)
    monkeypatch.setenv("HF_TOKEN", fake_token)
    check_hub_access(REPO, endpoint=recording_hub.url)
    monkeypatch.delenv("HF_TOKEN")
    (hf_home / "token").write_text(fake_token)  # what `huggingface-cli login` stores
    check_hub_access("vlmkit-org/model", endpoint=recording_hub.url)  # an organisation the user belongs to

    whoami = recording_hub.find("GET", "/api/whoami-v2")
    assert len(whoami) == 3
    assert all(r.headers["authorization"] == f"Bearer {fake_token}" for r in whoami)
    assert not recording_hub.find("POST", "/")  # a check creates nothing


def test_check_hub_access_offline(hf_home, fake_token, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubAccessError, match="unset HF_HUB_OFFLINE|Unset HF_HUB_OFFLINE"):
        check_hub_access(REPO, token=fake_token, endpoint=closed_port_url())
    assert time.monotonic() - start < 1.0


def test_check_hub_access_without_token(hf_home):
    start = time.monotonic()
    with pytest.raises(HubAccessError, match="huggingface-cli login") as info:
        check_hub_access(REPO, endpoint=closed_port_url())
    assert "HF_TOKEN" in str(info.value)
    assert time.monotonic() - start < 1.0


def test_check_hub_access_connection_refused(hf_home, fake_token):
    start = time.monotonic()
    with pytest.raises(HubAccessError, match="cannot reach") as info:
        check_hub_access(REPO, token=fake_token, endpoint=closed_port_url(), timeout=5.0)
    assert time.monotonic() - start < 3.0
    assert fake_token not in str(info.value)


def test_check_hub_access_never_answering_server_times_out(hf_home, fake_token):
    with SilentServer() as silent:
        start = time.monotonic()
        with pytest.raises(HubAccessError, match="did not answer within 1 s") as info:
            check_hub_access(REPO, token=fake_token, endpoint=silent.url, timeout=1.0)
        elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 3.0
    assert fake_token not in str(info.value)


def test_check_hub_access_rejected_token(recording_hub, fake_token):
    bad = "hf_" + "Expired" * 4
    with pytest.raises(HubAccessError, match="rejected") as info:
        check_hub_access(REPO, token=bad, endpoint=recording_hub.url)
    assert bad not in str(info.value) and fake_token not in str(info.value)


def test_check_hub_access_read_only_token_and_foreign_namespace(hf_home, fake_token):
    with RecordingHub(token=fake_token, role="read") as hub, pytest.raises(HubAccessError, match="read-only"):
        check_hub_access(REPO, token=fake_token, endpoint=hub.url)
    with RecordingHub(token=fake_token) as hub, pytest.raises(HubAccessError, match="not 'someone-else'"):
        check_hub_access("someone-else/model", token=fake_token, endpoint=hub.url)


def test_check_hub_access_rejects_invalid_repo_id(hf_home, fake_token):
    with pytest.raises(HubAccessError, match="Invalid hub_model_id"):
        check_hub_access("a/b/c", token=fake_token, endpoint=closed_port_url())


def test_check_hub_access_bounds_the_whole_call_not_just_the_socket(hf_home, fake_token, monkeypatch):
    """Even a stall outside the HTTP timeouts (e.g. a slow DNS resolver) cannot exceed `timeout`."""
    monkeypatch.setattr(push_module, "_whoami", lambda *args: time.sleep(5))
    start = time.monotonic()
    with pytest.raises(HubAccessError, match="did not answer within 0.5 s"):
        check_hub_access(REPO, token=fake_token, endpoint=closed_port_url(), timeout=0.5)
    assert time.monotonic() - start < 1.5
