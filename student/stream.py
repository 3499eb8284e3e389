"""The order a run reads its samples in: deterministic from (seed, epoch), split evenly over ranks.

1. Mixture: dataset weight w repeats each of its samples floor(w) times plus a seeded subset of the
   fraction (w = 0.5: half of them, a different half each epoch).
2. Shard streaming: samples are grouped by the shard of their clip, groups are shuffled, samples of a
   group stay in shard order: a worker reads shards front to back instead of seeking across the whole
   cache. Image-only samples have no shard to stream: each is a group of its own, spread evenly.
3. A seeded shuffle buffer mixes neighbouring groups.
4. Split by rank (every world-th sample), cut so every rank has the same number of full batches:
   under ZeRO-3 a rank that runs out while the others step would hang them.

Everything is computed from the manifests alone (no tensor is read), so resuming at batch k of an
epoch is recomputing this order and starting at k: the batches after a resume are exactly those of an
uninterrupted run. DataLoader workers then take batches round-robin (loader.py).
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


def rank_batches(order: list[int], rank: int, world: int, batch_size: int) -> list[list[int]]:
    """This rank's batches of one epoch; every rank gets the same number (the remainder is dropped)."""
    per_rank = len(order) // (world * batch_size) * batch_size
    mine = order[rank::world][:per_rank]
    return [mine[k:k + batch_size] for k in range(0, per_rank, batch_size)]
