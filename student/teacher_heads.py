"""D_m option "teacher": the frozen L4P DPT heads, loaded as torch.export programs from CACHE/teacher.

The caching job exports the heads' weights; `python -m pipeline.teachers.l4p.heads_export CACHE/teacher`
turns them into programs (graph + raw weights). student/ may not import pipeline/, so the heads reach it
as these files, never as code. They are frozen and replicated on every rank: kept out of the student's
module tree on purpose, so neither the optimizer nor ZeRO-3 partitioning ever sees them.

Each program returns its head's raw output: log depth, flow, the motion logit, the raw rays (what the
cache holds for dyn_mask and camray, and the student's prediction space). Cost per 16-frame window,
every step (bench/l4p_teacher.py): 85.8 M parameters and 2.84 TFLOP for each dense head (depth, flow,
dyn_mask), 82.3 M and 0.27 TFLOP for camray: what the "light" decoders avoid. The released code does
this; use it to reproduce it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from shards.teacher_fields import HEAD_PROGRAM_FILE, L4P_HOOKS



class FrozenTeacherHeads:
    def __init__(self, directory: str | Path, tasks: tuple[str, ...]):
        directory = Path(directory)
        self.programs = {}
        for task in tasks:
            path = directory / HEAD_PROGRAM_FILE.format(field=task)
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: run `python -m pipeline.teachers.l4p.heads_export {directory}` once "
                    "(needs the heads the caching job exported with an l4p teacher)"
                )
            module = torch.export.load(str(path)).module()
            for p in module.parameters():
                p.requires_grad_(False)
            self.programs[task] = module
        self.device = torch.device("cpu")

    def __call__(self, task: str, latents: torch.Tensor, windows: int) -> torch.Tensor:
        """latents [B, 4, W * 2048, C] -> [B, W, channels, 16, S, S] (gradient flows to `latents`)."""
        program = self.programs[task]
        if latents.device != self.device:
            program.to(latents.device)
            self.device = latents.device
        b, hooks, n, c = latents.shape
        if hooks != len(L4P_HOOKS):
            raise ValueError(f"the teacher heads take {len(L4P_HOOKS)} hooked taps, the branch predicts {hooks}")
        taps = latents.reshape(b, hooks, windows, n // windows, c).transpose(0, 1).flatten(1, 2)
        out = program(*taps.float())
        return out.reshape(b, windows, *out.shape[1:])
