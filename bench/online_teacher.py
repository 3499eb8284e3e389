"""The teacher run ONLINE inside each training step, as a trainer without a cache must: the targets
of a batch computed from its clips' frames by the teacher itself, in the rank process, for
student.train.Trainer(target_provider=...). bench/train_step.py times it, bench/equivalence.py
compares the run it makes with the same run trained from the cache.

The frames are the cache's `frames` field, which is the teacher's own input (the caching job decodes
once at the teacher's 224 x 224 and stores those frames losslessly, uint8 zstd) so the online teacher
sees exactly what the caching job's teacher saw; a cache whose frames are stored at another size is
refused. Clips go to the teacher one at a time, as the caching job's actor ran them with batch size 1:
the float results then do not depend on how clips were grouped.

Lives in bench/, not student/: student/ never imports the teacher (tests/test_layering.py).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.config import TeacherConfig
from pipeline.teachers.base import TeacherInput
from pipeline.teachers.registry import build_teacher, teacher_identity
from shards.cache_reader import ClipReader
from shards.teacher_fields import CLIP_FIELDS, INPUT_SIZE
from student.cache_index import load_cache_index


class OnlineTeacherTargets:
    """Fills a batch's `fields` (teacher outputs, float32, all valid) from the teacher's predict on the
    batch's cached frames. `seconds`: the time the last call took."""

    def __init__(self, cache, teacher: TeacherConfig, fields: tuple[str, ...]):
        index = load_cache_index(cache, split=None)
        identity = teacher_identity(teacher, index.specs["frames"].shape[0])
        if index.teacher_id != identity.teacher_id:
            raise ValueError(f"{cache}: cached by {index.teacher_id}, not by this {teacher.name} teacher "
                             f"({identity.teacher_id})")
        stored = tuple(index.specs["frames"].shape[1:3])
        if stored != tuple(identity.input_size) or stored != INPUT_SIZE:
            raise ValueError(f"{cache}: frames stored at {stored}, not at the teacher's input size "
                             f"{identity.input_size}: the online teacher would not see what the cached one saw")
        self.records = {r.sample_id: r for r in index.records}
        self.reader = ClipReader(index.root, CLIP_FIELDS)
        self.teacher = build_teacher(teacher)
        self.fields = fields
        self.seconds = 0.0

    def __call__(self, batch) -> None:
        start = time.perf_counter()
        outputs = []
        for row in batch.video_rows.tolist():
            clip = self.records[batch.sample_ids[row]].clip
            arrays = self.reader.read(clip)
            clip_input = TeacherInput(clip["video_uri"], np.asarray(clip["frame_indices"]), arrays["timestamps"],
                                      arrays["frames"])
            outputs.append(self.teacher.predict([clip_input])[0])
        for name in self.fields:
            batch.targets[name] = torch.from_numpy(np.stack([o[name] for o in outputs]).astype(np.float32))
            batch.target_valid[name] = torch.ones(len(outputs), dtype=torch.bool)
        self.seconds = time.perf_counter() - start
