"""Samples -> one padded student batch: token ids, answer-only labels, visual inputs, teacher targets.

A sample (what the loader yields, one per training example) is a dict:
  sample_id      str
  conversations  [{"role": "user"|"assistant", "content": str}, ...] (human/gpt accepted)
  frames         uint8 [T, H, W, 3] or None (image-only samples)
  timestamps     float [T] seconds, with frames
  images         list of uint8 [H, W, 3] (may be empty)
  window_starts  teacher window starts of the clip (the manifest's), with frames
  targets        {field: array or shards.codecs.Encoded} cached teacher outputs, as values or as stored
                 (codes + side arrays); a field that is missing (not cached, or not needed by any
                 enabled loss) is masked for this sample
The batch's video samples must share their frame count (one cache = one sampling, in practice).

Stored targets stay stored through the batch (`encoded_targets`: about 4x fewer bytes from the loader
workers to the step than float32) and become float32 values on the training device in the step
(`StudentBatch.to(device)`, shards/torch_codecs.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from shards.codecs import Encoded, stored_specs
from shards.schema import FieldSpec
from shards.teacher_fields import clip_window_starts
from shards.torch_codecs import decode_tensor
from student.adapters import VisualInput, VLMAdapter
from student.p4d import window_frames
from student.prompt import IGNORE, encode_conversation


@dataclass
class StudentBatch:
    sample_ids: list[str]
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L], IGNORE except answer tokens
    images: list[VisualInput]
    videos: list[VisualInput]
    video_rows: torch.Tensor  # [Bv] batch row of each video
    num_frames: int = 0  # frames of every video in the batch
    window_frames: torch.Tensor | None = None  # [W, 16] clip frame of each teacher window slot
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # field -> float32 [Bv, ...]
    target_valid: dict[str, torch.Tensor] = field(default_factory=dict)  # field -> bool [Bv]
    # field -> (its spec, its stored arrays [Bv, ...] by name): targets not decoded yet (`to` decodes them)
    encoded_targets: dict[str, tuple[FieldSpec, dict[str, torch.Tensor]]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> StudentBatch:
        """The batch on `device` (the training device), its stored targets decoded there into float32
        `targets`; returns itself."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        self.input_ids, self.attention_mask = move(self.input_ids), move(self.attention_mask)
        self.labels, self.video_rows = move(self.labels), move(self.video_rows)
        self.window_frames = None if self.window_frames is None else move(self.window_frames)
        self.images = [replace(v, pixels=move(v.pixels), slot_times=move(v.slot_times)) for v in self.images]
        self.videos = [replace(v, pixels=move(v.pixels), slot_times=move(v.slot_times)) for v in self.videos]
        self.targets = {name: move(t) for name, t in self.targets.items()}
        self.target_valid = {name: move(t) for name, t in self.target_valid.items()}
        for name, (spec, arrays) in self.encoded_targets.items():
            self.targets[name] = decode_tensor(spec, {k: move(v) for k, v in arrays.items()})
        self.encoded_targets = {}
        return self


def collate(
    samples: list[dict], adapter: VLMAdapter, tokenizer, fields: tuple[str, ...] = (), generation: bool = False
) -> StudentBatch:
    """`fields`: the teacher fields the enabled losses need. generation=True builds left-padded
    prompts that end with the assistant header."""
    images, videos, video_rows, encoded = [], [], [], []
    video_samples = []
    for row, s in enumerate(samples):
        where = f"sample {s.get('sample_id', row)!r}"
        media = []
        for image in s.get("images") or []:
            inp = adapter.prepare_image(image)
            images.append(inp)
            media.append(("image", adapter.placeholder_ids("image", inp.grid)))
        if s.get("frames") is not None:
            inp = adapter.prepare_video(s["frames"], s["timestamps"])
            videos.append(inp)
            video_rows.append(row)
            video_samples.append(s)
            media.insert(0, ("video", adapter.placeholder_ids("video", inp.grid)))
        encoded.append(encode_conversation(tokenizer, s["conversations"], media, where, generation))

    pad = tokenizer.pad_token_id
    length = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(samples), length), pad, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        span = slice(length - n, length) if generation else slice(0, n)
        ids[i, span] = torch.tensor(e.input_ids)
        labels[i, span] = torch.tensor(e.labels)
        mask[i, span] = 1

    batch = StudentBatch([s.get("sample_id", str(i)) for i, s in enumerate(samples)], ids, mask, labels,
                         images, videos, torch.tensor(video_rows, dtype=torch.long))
    if video_samples:
        _add_targets(batch, video_samples, fields)
    return batch


def _add_targets(batch: StudentBatch, samples: list[dict], fields: tuple[str, ...]) -> None:
    counts = {len(s["frames"]) for s in samples}
    if len(counts) > 1:
        raise ValueError(f"video samples of one batch must share their frame count, got {sorted(counts)}: "
                         "cache the mixture with one sampling.num_frames")
    batch.num_frames = counts.pop()
    expected = clip_window_starts(batch.num_frames)
    for s in samples:
        if [int(x) for x in s["window_starts"]] != expected:
            raise ValueError(f"sample {s.get('sample_id')!r}: teacher windows start at {list(s['window_starts'])}, "
                             f"not at {expected} as the cache's contract has them for {batch.num_frames} frames")
    batch.window_frames = window_frames(batch.num_frames)
    for name in fields:
        targets = [(s.get("targets") or {}).get(name) for s in samples]
        present = [t is not None for t in targets]
        if not any(present):
            continue
        specs = {t.spec for t in targets if isinstance(t, Encoded)}
        if len(specs) == 1 and all(isinstance(t, Encoded) for t in targets if t is not None):
            batch.encoded_targets[name] = (specs.pop(), _stack_stored(targets))
        else:
            batch.targets[name] = _stack_values(name, samples, [t.decode() if isinstance(t, Encoded) else t
                                                                for t in targets])
        batch.target_valid[name] = torch.tensor(present)


def _stack_values(name: str, samples: list[dict], values: list) -> torch.Tensor:
    """float32 [B, ...]; zeros for the samples without the field (masked)."""
    shape = next(np.shape(v) for v in values if v is not None)
    stacked = np.zeros((len(values), *shape), dtype=np.float32)
    for i, (s, value) in enumerate(zip(samples, values)):
        if value is not None:
            value = np.asarray(value, dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"sample {s.get('sample_id')!r}: {name} has shape {value.shape}, "
                                 f"the batch's others {shape}")
            stacked[i] = value
    return torch.from_numpy(stacked)


def _stack_stored(targets: list[Encoded | None]) -> dict[str, torch.Tensor]:
    """Each stored array of the field, [B, ...] in its stored dtype (uint16 as int16 bits, which torch
    handles everywhere); zeros for the samples without it, which decode to zeros (masked anyway)."""
    spec = next(t.spec for t in targets if t is not None)
    out = {}
    for stored in stored_specs([spec]):
        dtype = np.int16 if stored.dtype == "uint16" else np.dtype(stored.dtype)
        stacked = np.zeros((len(targets), *stored.shape), dtype=dtype)
        for i, target in enumerate(targets):
            if target is not None:
                stacked[i] = target.arrays[stored.name].view(dtype)
        out[stored.name] = torch.from_numpy(stacked)
    return out
