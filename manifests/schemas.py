"""Arrow schemas of the two manifest tables, defined once.

clips:   one row per clip (one video + one frame sampling), failures included.
samples: one row per training example; points at a clip by cache_key, or at images only.
Both are plain Parquet: any pyarrow / pandas / DuckDB reader opens them.
"""
from __future__ import annotations

import pyarrow as pa

CLIP_OK = "ok"
CLIP_FAILED = "failed"  # the clip itself cannot be cached (its reason in `error`): reruns keep it
CLIP_TRANSIENT = "transient"  # the machine failed the clip every time it was tried: the next run retries it

CLIPS_SCHEMA = pa.schema(
    [
        pa.field("cache_key", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),  # human-readable: video stem + key prefix
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("video_sha256", pa.string()),  # null when the file could not be read at all
        pa.field("sampling", pa.string(), nullable=False),  # JSON of the sampling parameters
        pa.field("frame_indices", pa.list_(pa.int32())),
        pa.field("timestamps", pa.list_(pa.float64())),  # seconds, from the container
        # Start (in clip frames, of the mirror-padded clip) of each 16-frame teacher window: per-window
        # fields (camray; latents in window-major token order) follow this order.
        pa.field("window_starts", pa.list_(pa.int32())),
        pa.field("teacher_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # CLIP_OK | CLIP_FAILED | CLIP_TRANSIENT
        pa.field("stage", pa.string()),  # where a failure happened: hash | decode | teacher | encode
        pa.field("error", pa.string()),  # the readable reason of a failure
        pa.field("format", pa.string()),  # zarr | wds
        pa.field("shard", pa.string()),  # shard path relative to the cache root
        pa.field("row", pa.int32()),  # position of the clip inside its shard
        pa.field("nbytes", pa.int64()),  # stored bytes of the clip's arrays before compression
        pa.field("checksums", pa.map_(pa.string(), pa.string())),  # field -> sha256 of stored bytes
        pa.field("fields", pa.string()),  # JSON list of FieldSpec: dtype, shape, codec per field
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

CONVERSATION_TURN = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

# A region is one marked object: `<obj_k>` in a question refers to mark_id k. Boxes are per video
# frame (native frame index), normalized [x0, y0, x1, y1] in [0, 1], so they survive any resize.
REGION = pa.struct(
    [
        pa.field("mark_id", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("frame_indices", pa.list_(pa.int32())),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("video", pa.string()),  # media path relative to the dataset root (as annotated)
        pa.field("cache_key", pa.string()),  # filled by the caching job; null for image-only samples
        # Image paths: relative to the dataset root, or to the cache root for --source rows (copied there).
        pa.field("images", pa.list_(pa.string())),
        pa.field("conversations", pa.list_(CONVERSATION_TURN), nullable=False),
        pa.field("regions", pa.list_(REGION)),
        pa.field("meta", pa.string()),  # JSON: question type, exact answer value, units, ...
    ]
)

# The clips a job wants, as planning holds them in memory (pipeline.sources.build_requests): one row
# per clip, its cache key and content hash as their 32 raw bytes (half their hex text: ten million
# rows must fit beside everything else planning holds).
CLIP_REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("video_uri", pa.string(), nullable=False),  # absolute path
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_sha256", pa.binary(32)),  # null when the bytes could not be read
        pa.field("read_error", pa.string()),  # why, naming the file
        pa.field("cache_key", pa.binary(32), nullable=False),
    ]
)
# A clip with its own part of its video (pipeline.sources.ClipRequest.span: an STI-Bench question's time
# span) is sampled from span_start to span_end (seconds) instead of the job's sampling.start / end. Only
# a table where some clip has a span holds these columns (null in the other rows): a table without
# spans costs nothing for them.
SPAN_FIELDS = (pa.field("span_start", pa.float64()), pa.field("span_end", pa.float64()))
SPANNED_REQUESTS_SCHEMA = pa.schema([*CLIP_REQUESTS_SCHEMA, *SPAN_FIELDS])
