"""Cache keys: same key, same bytes, never recompute.

A clip's key hashes everything that determines its cached arrays: the video's CONTENT (not its
path: a renamed file reuses its entry, a rewritten one does not), the frame sampling, the teacher id
(architecture + weights), the preprocessing version and the stored-output spec.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

# Bump when decoding, resizing or normalization changes what the teacher sees: every key changes.
PREPROCESS_VERSION = 1

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def compute_cache_key(
    video_identity: str, sampling: dict, teacher_id: str, output_spec: str,
    preprocess_version: int = PREPROCESS_VERSION,
) -> str:
    """video_identity: "sha256:<hex>" of the content, or "unreadable:<uri>" when the bytes could
    not be read (so a missing file gets a stable key and its failed row is not retried forever;
    once the file exists its content gives a new key)."""
    return cache_key_function(sampling, teacher_id, output_spec, preprocess_version)(video_identity)


def cache_key_function(
    sampling: dict, teacher_id: str, output_spec: str, preprocess_version: int = PREPROCESS_VERSION,
) -> Callable[[str], str]:
    """compute_cache_key with everything but the video fixed, for keying many videos: the fixed part
    (the stored-field spec alone is ~2 KB of JSON) is serialized and hashed once, and each key only
    adds its video's identity to a copy of that hash state. Same keys as compute_cache_key."""
    fixed = {"sampling": sampling, "teacher": teacher_id, "preprocess": preprocess_version, "output": output_spec}
    # canonical_json sorts keys and "video" sorts last: the payload is this head, the identity, "}".
    head = canonical_json({**fixed, "video": ""})
    tail = '"video":""}'
    if not head.endswith(tail):
        raise AssertionError("cache key payload: 'video' must be the last key")
    state = hashlib.sha256(head[: -len(tail) + len('"video":')].encode())

    def key_of(video_identity: str) -> str:
        digest = state.copy()
        digest.update((json.dumps(video_identity) + "}").encode())
        return digest.hexdigest()

    return key_of
