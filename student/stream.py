"""The order a run reads its samples in: deterministic from (seed, epoch) and the data selection alone,
then cut into optimizer steps and split over ranks by global position.

1. Mixture: dataset weight w repeats each of its samples floor(w) times plus a seeded subset of the
   fraction (w = 0.5: half of them, a different half each epoch).
2. Shard streaming: samples are grouped by the shard of their clip, groups are shuffled, samples of a
   group stay in shard order: a worker reads shards front to back instead of seeking across the whole
   cache. Image-only samples have no shard to stream: each is a group of its own, spread evenly.
3. A seeded shuffle buffer mixes neighbouring groups.
4. Steps and ranks: an optimizer step takes the next `global batch` positions of the epoch's order
   (while that many remain: the rest of the epoch is dropped, so every rank has the same number of
   batches; under ZeRO-3 a rank that runs out while the others step would hang them); each of its
   passes (gradient accumulation) the next world x batch_size, rank r the r-th batch_size of them.

The order (1-3) does not depend on the number of ranks, and a rank's share is a function of the global
position, the world size and the per-rank batch; so the loader's whole state is (epoch, global
position), and a run resumed on another number of ranks with the same global batch reads the same
samples in the same optimizer steps. Everything is computed from the manifests alone (no tensor is
read). DataLoader workers then take batches round-robin (loader.py).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from student.cache_index import Record


def mixture(records: list[Record], weights: dict[str, float], rng: np.random.Generator) -> list[int]:
    by_dataset = defaultdict(list)
    for i, r in enumerate(records):
        by_dataset[r.dataset].append(i)
    chosen = []
    for name in sorted(by_dataset):
        ids = by_dataset[name]
        w = weights.get(name, 1.0)
        if w < 0:
            raise ValueError(f"data.weights.{name} must be >= 0, got {w}")
        whole, frac = int(w), w - int(w)
        chosen += ids * whole
        extra = int(round(frac * len(ids)))
        if extra:
            chosen += [ids[j] for j in sorted(rng.choice(len(ids), size=extra, replace=False))]
    return chosen


def shard_groups(records: list[Record], chosen: list[int]) -> list[list[int]]:
    by_shard = defaultdict(list)
    images = []
    for i in chosen:
        shard = records[i].shard
        if shard is None:
            images.append(i)
        else:
            by_shard[shard].append(i)
    groups = [sorted(by_shard[s], key=lambda i: records[i].clip["row"]) for s in sorted(by_shard)]
    groups += [[i] for i in images]
    return groups


def shuffle_buffer(items: list[int], size: int, rng: np.random.Generator) -> list[int]:
    """Emit a random element of a `size`-element buffer each time a new element arrives."""
    if size <= 1:
        return list(items)
    out, buf = [], []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        out.append(buf[j])
        buf[j] = item
    rng.shuffle(buf)
    return out + buf


def epoch_order(records: list[Record], weights: dict[str, float], seed: int, epoch: int,
                buffer: int) -> list[int]:
    """Record indices of one epoch, in reading order (before the rank split)."""
    rng = np.random.default_rng([seed, epoch])
    groups = shard_groups(records, mixture(records, weights, rng))
    order = [i for g in (groups[k] for k in rng.permutation(len(groups))) for i in g]
    return shuffle_buffer(order, buffer, rng)


def rank_batches(length: int, rank: int, world: int, batch_size: int, accumulation: int,
                 start: int = 0) -> list[range]:
    """This rank's batches of an epoch of `length` samples from global position `start` on, as ranges of
    positions in the epoch's order (4. above); every rank gets the same number."""
    per_pass = world * batch_size
    passes = max(0, length - start) // (per_pass * accumulation) * accumulation
    return [range(first, first + batch_size)
            for first in (start + p * per_pass + rank * batch_size for p in range(passes))]
