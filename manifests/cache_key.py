"""Cache keys: same key, same bytes, never recompute.

A clip's key hashes everything that determines its cached arrays: the video's CONTENT (not its
path: a renamed file reuses its entry, a rewritten one does not), the frame sampling, the teacher id
(architecture + weights), the preprocessing version and the stored-output spec.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Bump when decoding, resizing or normalization changes what the teacher sees: every key changes.
PREPROCESS_VERSION = 1

_CHUNK = 1 << 20

# Planning holds keys and content hashes as their 32 raw bytes (binary(32)): half their hex text.
DIGEST_BYTES = 32
DIGEST = pa.binary(DIGEST_BYTES)
_PAYLOAD_BYTES = len('"sha256:"}') + 2 * DIGEST_BYTES
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
# byte -> its two hex characters as one little-endian uint16 (the first character in the low byte)
_HEX_PAIRS = (_HEX[np.arange(256) >> 4].astype("<u2") | (_HEX[np.arange(256) & 15].astype("<u2") << 8))
# two characters read as one little-endian uint16 -> the byte they write; 0xFFFF if either is not hex
_PAIR_VALUE = np.full(1 << 16, 0xFFFF, np.uint16)
_PAIR_VALUE[_HEX_PAIRS] = np.arange(256, dtype=np.uint16)
_KEY_CHUNK = 1 << 16


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
    state = _fixed_state(sampling, teacher_id, output_spec, preprocess_version)

    def key_of(video_identity: str) -> str:
        digest = state.copy()
        digest.update((json.dumps(video_identity) + "}").encode())
        return digest.hexdigest()

    return key_of


def cache_keys(
    video_sha256: pa.Array, video_uri: pa.Array, samplings: Sequence[dict], teacher_id: str, output_spec: str,
    which: np.ndarray | None = None, preprocess_version: int = PREPROCESS_VERSION,
) -> pa.Array:
    """The cache keys of many clips at once, as 32 raw bytes each (hex_digests gives the text form):
    identity "sha256:<hex>" where video_sha256 (32 raw bytes) is set, else "unreadable:<uri>"; clip i
    sampled as samplings[which[i]] (which None: every clip as samplings[0]). Same keys as
    compute_cache_key; one hash-state copy per clip is the whole per-row cost."""
    copies = [_fixed_state(s, teacher_id, output_spec, preprocess_version).copy for s in samplings]
    sha = digest_bytes(video_sha256)
    readable = video_sha256.is_valid().to_numpy(zero_copy_only=False)
    keys = np.empty((len(sha), DIGEST_BYTES), np.uint8)
    for start in range(0, len(sha), _KEY_CHUNK):  # the payloads a chunk at a time: 74 bytes a video
        chunk = sha[start:start + _KEY_CHUNK]
        # The identity's JSON is '"sha256:<64 hex>"' (hex needs no escaping), then the payload's closing brace.
        payload = np.empty((len(chunk), _PAYLOAD_BYTES), np.uint8)
        payload[:, :8] = np.frombuffer(b'"sha256:', np.uint8)
        payload[:, 8:72] = _hex_bytes(chunk)
        payload[:, 72:] = np.frombuffer(b'"}', np.uint8)
        flat = memoryview(payload.reshape(-1))
        # Each clip's sampling's hash state: one for all (no lookup per clip), or the one `which` names.
        states = (repeat(copies[0]) if which is None
                  else map(copies.__getitem__, which[start:start + _KEY_CHUNK].tolist()))
        digests = []
        for offset, copy in zip(range(0, len(flat), _PAYLOAD_BYTES), states):
            digest = copy()
            digest.update(flat[offset:offset + _PAYLOAD_BYTES])
            digests.append(digest.digest())
        keys[start:start + len(chunk)] = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, DIGEST_BYTES)
    for i in np.flatnonzero(~readable):
        digest = copies[0 if which is None else which[i]]()
        digest.update((json.dumps(f"unreadable:{video_uri[i].as_py()}") + "}").encode())
        keys[i] = np.frombuffer(digest.digest(), np.uint8)
    return _fixed_binary(keys)


def hex_digests(digests: pa.Array, length: int = DIGEST_BYTES) -> pa.Array:
    """32-byte digests (binary(32), nulls kept) as lowercase hex strings of their first `length` bytes
    (all 64 characters by default)."""
    digests = digests.combine_chunks() if isinstance(digests, pa.ChunkedArray) else digests
    n = len(digests)
    text = np.ascontiguousarray(_hex_bytes(digest_bytes(digests)[:, :length]))
    offsets = np.arange(0, (n + 1) * 2 * length, 2 * length, dtype=np.int32)
    # A fresh bitmap: the input's own may start at a bit offset (a slice).
    validity = pc.is_valid(digests).buffers()[1] if digests.null_count else None
    return pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(text)],
                                 null_count=digests.null_count)


def digests_of_hex(text: pa.Array, where: Callable[[int], str]) -> pa.Array:
    """64-character hex strings (no nulls) as binary(32). A bad value raises ValueError, its place
    given by where(row) ("FILE: row N")."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(text)
    if n == 0:
        return pa.array([], DIGEST)
    lengths = pc.binary_length(text).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(text.is_null().to_numpy(zero_copy_only=False) | (lengths != 2 * DIGEST_BYTES))
    digests = np.empty((n, DIGEST_BYTES), np.uint8)
    if not bad.size:
        # Every row is 64 bytes long, so the rows lie back to back from the first offset.
        first = np.frombuffer(text.buffers()[1], np.int32, 1, text.offset * 4)[0]
        pairs = np.frombuffer(text.buffers()[2], "<u2", n * DIGEST_BYTES, first).reshape(n, DIGEST_BYTES)
        for start in range(0, n, _KEY_CHUNK):  # a chunk at a time: the lookups are 2 bytes a character pair
            values = _PAIR_VALUE[pairs[start:start + _KEY_CHUNK]]
            bad = start + np.flatnonzero((values > 255).any(axis=1))
            if bad.size:
                break
            digests[start:start + len(values)] = values
    if bad.size:
        raise ValueError(f"{where(int(bad[0]))}: {text[bad[0]].as_py()!r} is not a 64-character lowercase hex digest")
    return _fixed_binary(digests)


def digest_bytes(digests: pa.Array) -> np.ndarray:
    """The (rows, 32) uint8 view of a binary(32) array (a null row's bytes are unspecified)."""
    if isinstance(digests, pa.ChunkedArray):
        digests = digests.chunk(0) if digests.num_chunks == 1 else digests.combine_chunks()
    data = digests.buffers()[1]
    if data is None:
        return np.zeros((len(digests), DIGEST_BYTES), np.uint8)
    return np.frombuffer(data, np.uint8, len(digests) * DIGEST_BYTES, digests.offset * DIGEST_BYTES).reshape(
        -1, DIGEST_BYTES)


def _hex_bytes(raw: np.ndarray) -> np.ndarray:
    return _HEX_PAIRS[raw].view(np.uint8).reshape(len(raw), 2 * raw.shape[1])


def _fixed_binary(raw: np.ndarray) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(DIGEST, len(raw), [None, pa.py_buffer(np.ascontiguousarray(raw))])


def _fixed_state(sampling: dict, teacher_id: str, output_spec: str, preprocess_version: int):
    """The hash state after the payload's part that is the same for every video."""
    fixed = {"sampling": sampling, "teacher": teacher_id, "preprocess": preprocess_version, "output": output_spec}
    # canonical_json sorts keys and "video" sorts last: the payload is this head, the identity, "}".
    head = canonical_json({**fixed, "video": ""})
    tail = '"video":""}'
    if not head.endswith(tail):
        raise AssertionError("cache key payload: 'video' must be the last key")
    return hashlib.sha256(head[: -len(tail) + len('"video":')].encode())
