"""Share a run's output directory on the Hugging Face Hub, with a pre-flight access check before training.

Call `check_hub_access(repo_id)` at the start of a run that will push, so a missing or read-only token, offline
mode or an unreachable Hub fails in seconds instead of after hours of training; then `push_to_hub(output_dir,
repo_id)` at the end. Tokens are only ever sent in the `authorization` header: never logged, printed, put into
an error message or written to disk.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, constants, get_session, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import build_hf_headers, filter_repo_objects, hf_raise_for_status, validate_repo_id

from vlmkit import __version__
from vlmkit.hub.model_card import scrub_secrets

logger = logging.getLogger(__name__)

# Applied on paths relative to the folder, with fnmatch (`*` also matches `/`). What a run directory holds that a
# user of the model does not need: intermediate checkpoints (HF Trainer `checkpoint-N/`, Accelerate
# `checkpoints/`, DeepSpeed `global_stepN/`), optimizer / scheduler / RNG states, pickled training arguments
# (HF `training_args.bin` can hold a hub token), TensorBoard / W&B logs and caches.
IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoint-*/*",
    "*/checkpoint-*/*",
    "checkpoints/*",
    "global_step*/*",
    "*/global_step*/*",
    "latest",
    "zero_to_fp32.py",
    "*optimizer*.pt",
    "*optimizer*.bin",
    "*scheduler*.pt",
    "*scheduler*.bin",
    "*scaler*.pt",
    "*rng_state*.pth",
    "*random_states*.pkl",
    "training_args.bin",
    "runs/*",
    "*events.out.tfevents*",
    "wandb/*",
    "__pycache__/*",
    "*.pyc",
    ".env",
    ".*.tmp",
)

_SCAN_LIMIT_BYTES = 16 * 1024 * 1024  # files up to this size are checked for a leaked token before upload
_LOGIN_HINT = (
    "Run `huggingface-cli login` (or `hf auth login`), or set the HF_TOKEN environment variable to a token "
    "with write access from https://huggingface.co/settings/tokens."
)


class HubAccessError(RuntimeError):
    """The Hub cannot be used for this push (offline, no or bad token, unreachable endpoint, no permission)."""


def _offline_mode() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    env_offline = any(f and f.strip().lower() in ("1", "true", "yes", "on") for f in flags)
    return env_offline or constants.is_offline_mode()


def _require_online() -> None:
    if _offline_mode():
        raise HubAccessError(
            "Hugging Face Hub offline mode is enabled (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so nothing "
            "can be pushed. Unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, or turn off pushing to the Hub."
        )


def _resolve_token(token: str | None) -> str:
    resolved = token or get_token()
    if not resolved:
        raise HubAccessError(
            f"No Hugging Face token found (argument, HF_TOKEN or stored login). {_LOGIN_HINT}"
        )
    return resolved


def _validated_repo_id(hub_model_id: str) -> str:
    try:
        validate_repo_id(hub_model_id)
    except HFValidationError as err:
        raise HubAccessError(
            f"Invalid hub_model_id {hub_model_id!r}: {err}. Use 'name' or 'namespace/name'."
        ) from None
    return hub_model_id


def _is_network_error(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")


def _explain(err: BaseException, endpoint: str, timeout: float | None, token: str) -> str:
    """A token-free, actionable description of an error raised while talking to the Hub."""
    if isinstance(err, OfflineModeIsEnabled):
        return "offline mode is enabled. Unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE."
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return f"the token was rejected (HTTP 401: invalid or expired). {_LOGIN_HINT}"
        if status == 403:
            return f"the token has no permission for this repository (HTTP 403). {_LOGIN_HINT}"
        return f"the Hub answered HTTP {status}: {scrub_secrets(str(err), [token])}"
    name = type(err).__name__
    if "Timeout" in name and timeout is not None:
        return f"{endpoint} did not answer within {timeout:g} s. Check your network / proxy or HF_ENDPOINT."
    if _is_network_error(err):
        return f"cannot reach {endpoint} ({name}). Check your network / proxy or HF_ENDPOINT."
    return f"{name}: {scrub_secrets(str(err), [token])}"


def _whoami(endpoint: str, token: str, timeout: float) -> dict:
    """GET /api/whoami-v2 on the shared huggingface_hub session with a per-request timeout."""
    headers = build_hf_headers(token=token, library_name="vlmkit", library_version=__version__)
    response = get_session().get(f"{endpoint}/api/whoami-v2", headers=headers, timeout=timeout)
    hf_raise_for_status(response)
    return response.json()


def check_hub_access(
    hub_model_id: str, *, token: str | None = None, endpoint: str | None = None, timeout: float = 10.0
) -> None:
    """Fail within about `timeout` seconds with `HubAccessError` unless `hub_model_id` can be pushed to.

    Checks, without creating anything: offline mode, a token is available (argument, HF_TOKEN or the stored
    login), the endpoint answers `whoami` in time, the token is accepted and not read-only, and the repo's
    namespace is the user or one of their organisations. Run it before training.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}.")
    repo_id = _validated_repo_id(hub_model_id)
    _require_online()
    resolved = _resolve_token(token)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")

    # The per-request timeout bounds connect and read; the thread bounds everything else (e.g. a slow DNS).
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["info"] = _whoami(endpoint, resolved, timeout)
        except Exception as err:  # reported below, in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=call, name="vlmkit-hub-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise HubAccessError(
            f"Cannot push to {repo_id!r}: {endpoint} did not answer within {timeout:g} s. "
            "Check your network / proxy or HF_ENDPOINT."
        )
    if "error" in outcome:
        err = outcome["error"]
        assert isinstance(err, BaseException)
        raise HubAccessError(
            f"Cannot push to {repo_id!r}: {_explain(err, endpoint, timeout, resolved)}"
        ) from None

    info = outcome["info"]
    assert isinstance(info, dict)
    role = (info.get("auth") or {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubAccessError(f"Cannot push to {repo_id!r}: the token is read-only. {_LOGIN_HINT}")
    user = info.get("name", "?")
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    allowed = {user} | {org.get("name") for org in info.get("orgs") or []}
    if info.get("type", "user") == "user" and namespace not in allowed:
        raise HubAccessError(
            f"Cannot push to {repo_id!r}: user {user!r} is not {namespace!r} nor a member of it "
            f"(organisations: {sorted(a for a in allowed if a and a != user)}). Use '{user}/<name>' or an "
            "organisation you belong to."
        )
    logger.info("Hub access OK: %s can push to %s at %s", user, repo_id, endpoint)


def files_to_upload(
    folder: str | os.PathLike,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] = IGNORE_PATTERNS,
) -> list[str]:
    """The relative paths under `folder` that `push_to_hub` uploads with these patterns."""
    root = Path(folder)
    relpaths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    hidden = [".git/*", "*/.git/*", ".cache/*", "*/.cache/*"]  # also dropped by huggingface_hub itself
    patterns = [*ignore_patterns, *hidden]
    allow = list(allow_patterns) if allow_patterns is not None else None
    return list(filter_repo_objects(relpaths, allow_patterns=allow, ignore_patterns=patterns))


def _refuse_leaked_token(root: Path, relpaths: list[str], token: str) -> None:
    needle = token.encode()
    for rel in relpaths:
        path = root / rel
        if path.stat().st_size <= _SCAN_LIMIT_BYTES and needle in path.read_bytes():
            raise HubAccessError(
                f"{path} contains your Hugging Face token; nothing was uploaded. Remove the token from that "
                "file (tokens belong in HF_TOKEN or `huggingface-cli login`, never in run outputs) and retry."
            )


def push_to_hub(
    folder: str | os.PathLike,
    hub_model_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload model trained with vlmkit",
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] = IGNORE_PATTERNS,
) -> str:
    """Create `hub_model_id` if needed (`private` applies only when it is created) and upload `folder`.

    Files matching `ignore_patterns` (default `IGNORE_PATTERNS`: checkpoints, optimizer states, logs) are
    skipped; `allow_patterns` restricts the upload further. Returns the repo URL.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Cannot push {root}: not a directory. Pass the run's output_dir.")
    repo_id = _validated_repo_id(hub_model_id)
    _require_online()
    resolved = _resolve_token(token)
    relpaths = files_to_upload(root, allow_patterns, ignore_patterns)
    if not relpaths:
        raise ValueError(
            f"Nothing to upload from {root} with allow_patterns={allow_patterns}; check the folder."
        )
    _refuse_leaked_token(root, relpaths, resolved)

    api = HfApi(endpoint=endpoint, token=resolved, library_name="vlmkit", library_version=__version__)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=root,
            commit_message=commit_message,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            ignore_patterns=list(ignore_patterns),  # upload_folder extends this list in place
        )
    except Exception as err:
        if not isinstance(err, (OfflineModeIsEnabled, HfHubHTTPError)) and not _is_network_error(err):
            raise
        reason = _explain(err, api.endpoint, None, resolved)
        raise HubAccessError(f"Pushing {root} to {repo_id!r} failed: {reason}") from None
    logger.info("Pushed %d files from %s to %s", len(relpaths), root, repo_url)
    return str(repo_url)
