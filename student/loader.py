"""Streaming the cache into student batches, resumably.

The pipeline, as explicit stages (each a function of the previous one's output):
  order      stream.epoch_order / rank_batches: which samples, in which batches (manifests only), by
             global position in the epoch's order
  read       shards.cache_reader.ClipReader: this batch's clips from their shards, only the fields the
             losses need, quantized ones as stored (decoded to float32 on the training device, in the
             step: student.batch); the last data.clip_cache clips a worker read are kept, so samples of
             a clip read close together read it once
  augment    a seeded flip / crop of frames, regions and every target together (student/augment.py);
             the draw is seeded by (seed, epoch, global position), so a resumed run draws the same
             views, on any number of ranks. It works on values (a crop rescales flow): with
             augmentation on, targets are decoded here, on the CPU
  marks      the sample's regions drawn as Set-of-Marks labels on its frames (student/marks.py)
  images     image-only samples' pictures from the cache's image root
  collate    student.batch.collate: tokens, answer-only labels, visual inputs, targets + masks

Batches are taken round-robin by DataLoader workers (the j-th batch from the start by worker j mod W,
which is the order a DataLoader interleaves its workers in), so the stream a rank sees does not depend
on the number of workers, and `state_dict()` (epoch, global position: samples of the epoch consumed by
all ranks) is all a checkpoint needs to resume, on any number of ranks.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from manifests.regions import parse_regions
from shards.cache_reader import ClipReader
from shards.codecs import Encoded
from shards.store import is_url, join, location, open_for_read
from shards.teacher_fields import CLIP_FIELDS
from student.augment import AugmentConfig, augment
from student.batch import collate
from student.cache_index import CacheIndex, Record
from student.marks import MarkStyle, draw_clip_marks
from student.stream import epoch_order, rank_batches
from student.train_config import DataConfig

# A mirrored view would make an answer about left / right false: such samples are never flipped.
SIDEDNESS = re.compile(r"\b(left|right)", re.IGNORECASE)


def _inside(root: Path | str, relative: str) -> Path | str:
    if is_url(root):
        # An object key has no '..' resolution: refuse any such part rather than trust the store's.
        if relative.startswith("/") or ".." in relative.split("/"):
            raise ValueError(f"image path {relative!r} escapes the image root {root}")
        return join(root, relative)
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"image path {relative!r} escapes the image root {root}")
    return path


def build_sample(record: Record, reader: ClipReader, image_root: Path, marks: MarkStyle | None = None,
                 augmentation: AugmentConfig | None = None, rng: np.random.Generator | None = None) -> dict:
    """One sample dict for student.batch.collate. `augmentation` (with `rng`): a random consistent view
    of the clip; a target the view makes untrue (e.g. latents of a flipped clip) is dropped, which
    masks its loss for this sample. `marks`: draw the sample's regions as Set-of-Marks labels on its
    frames (at load time: the cache holds unmarked frames; None: no marks). Targets come as the reader
    gives them (values, or stored: shards.codecs.Encoded), decoded here only for augmentation."""
    sample = {"sample_id": record.sample_id, "conversations": list(record.conversations), "images": []}
    if record.clip is not None:
        arrays = reader.read(record.clip)
        regions = parse_regions(record.regions, f"sample {record.sample_id!r}") if record.regions else []
        if augmentation is not None:
            arrays = {k: v.decode() if isinstance(v, Encoded) else v for k, v in arrays.items()}
            text = " ".join(t.get("content") or t.get("value") or "" for t in record.conversations)
            if SIDEDNESS.search(text):
                augmentation = replace(augmentation, hflip_prob=0.0)
            view = augment(arrays, regions, augmentation, rng)
            arrays = {k: v for k, v in view.arrays.items() if view.valid.get(k, True)}
            regions = view.regions
        frames = arrays.pop("frames")
        if marks is not None and regions:
            frames = draw_clip_marks(frames, record.clip["frame_indices"], regions, marks)
        sample["frames"] = frames
        sample["timestamps"] = arrays.pop("timestamps")
        sample["window_starts"] = record.clip["window_starts"]
        sample["targets"] = arrays
    for rel in record.images:
        with open_for_read(_inside(image_root, rel)) as f, Image.open(f) as im:
            sample["images"].append(np.asarray(im.convert("RGB")))
    return sample


class _EpochBatches(IterableDataset):
    def __init__(self, index: CacheIndex, order: list[int], batches: list[range], fields, adapter, tokenizer,
                 image_root: Path, cfg: DataConfig, epoch: int):
        self.index, self.order, self.batches = index, order, batches
        self.fields, self.adapter, self.tokenizer, self.image_root = fields, adapter, tokenizer, image_root
        self.marks = cfg.marks if cfg.draw_marks else None
        self.augmentation = cfg.augment if cfg.augment.hflip_prob or cfg.augment.crop_prob else None
        self.seed, self.epoch, self.clip_cache = cfg.seed, epoch, cfg.clip_cache

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        reader = ClipReader(self.index.root, (*CLIP_FIELDS, *self.fields), decode=False, keep_clips=self.clip_cache)
        for j, positions in enumerate(self.batches):
            if j % workers != worker:
                continue
            samples = [build_sample(self.index.records[self.order[p]], reader, self.image_root, self.marks,
                                    self.augmentation, np.random.default_rng([self.seed, self.epoch, p]))
                       for p in positions]
            yield collate(samples, self.adapter, self.tokenizer, self.fields)


class StudentLoader:
    """Infinite iterator over this rank's batches (epoch after epoch) with a resumable position.
    `accumulation`: passes per optimizer step (a step takes world x batch_size x accumulation samples)."""

    def __init__(self, index: CacheIndex, cfg: DataConfig, rank: int, world: int, adapter, tokenizer,
                 fields: tuple[str, ...], image_root: str | Path | None = None, accumulation: int = 1):
        self.index, self.cfg, self.rank, self.world = index, cfg, rank, world
        self.adapter, self.tokenizer, self.fields = adapter, tokenizer, fields
        self.image_root = location(image_root) if image_root else index.root
        self.accumulation = accumulation
        self.epoch, self.position = 0, 0  # of the next pass: samples of the epoch taken by all ranks before it
        self.last_positions: list[int] = []  # in the epoch's order, of the batch handed out last

    def _order(self, epoch: int) -> list[int]:
        return epoch_order(self.index.records, self.cfg.weights, self.cfg.seed, epoch, self.cfg.shuffle_buffer)

    def _batches(self, order: list[int], start: int) -> list[range]:
        batches = rank_batches(len(order), self.rank, self.world, self.cfg.batch_size, self.accumulation, start)
        if not batches and start == 0:
            raise ValueError(f"{self.index.root}: {len(order)} samples make no optimizer step of "
                             f"{self.cfg.batch_size} x {self.world} ranks x {self.accumulation} passes")
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Record indices of this rank's batches in a whole epoch."""
        order = self._order(epoch)
        return [[order[p] for p in positions] for positions in self._batches(order, 0)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        per_pass = self.world * self.cfg.batch_size
        while True:
            order = self._order(self.epoch)
            batches = self._batches(order, self.position)
            dataset = _EpochBatches(self.index, order, batches, self.fields, self.adapter, self.tokenizer,
                                    self.image_root, self.cfg, self.epoch)
            loader = DataLoader(dataset, batch_size=None, num_workers=min(self.cfg.num_workers, len(batches)),
                                collate_fn=lambda b: b, persistent_workers=False)
            for batch, positions in zip(loader, batches):
                self.position = positions.start - self.rank * self.cfg.batch_size + per_pass
                self.last_positions = list(positions)
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

