"""Model names as the configs give them -> what `from_pretrained` loads.

`vlmkit-tiny/<name>` names a tiny checkpoint built locally on first use (no download), and
`vlmkit-tiny/native-<family>` a tiny native transformers VLM of that family; any other name or path is passed
through unchanged.
"""

from __future__ import annotations

from vlmkit.models.native.tiny import NATIVE_PREFIX, build_tiny_native
from vlmkit.models.tiny import TINY_PREFIX, build_tiny


def resolve_model_path(name_or_path: str | None) -> str | None:
    """Map `vlmkit-tiny/<name>` to a built local directory; anything else is returned unchanged."""
    if name_or_path and name_or_path.startswith(NATIVE_PREFIX):
        return str(build_tiny_native(name_or_path[len(NATIVE_PREFIX) :]))
    if name_or_path and name_or_path.startswith(TINY_PREFIX):
        return str(build_tiny(name_or_path[len(TINY_PREFIX) :]))
    return name_or_path
