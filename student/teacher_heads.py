"""D_m "teacher" (the default, as released): the frozen L4P DPT heads, loaded as torch.export programs
from CACHE/teacher.

The caching job (an l4p teacher) writes the heads' weights and these programs (graph + raw weights;
`python -m pipeline.teachers.l4p.heads_export CACHE/teacher` remakes them). student/ may not import pipeline/, so the heads reach it
as these files, never as code. They are frozen and replicated on every rank: kept out of the student's
module tree on purpose, so neither the optimizer nor ZeRO-3 partitioning ever sees them.

Each program returns its head's raw output: log depth, flow, the motion logit, the raw rays (what the
cache holds for dyn_mask and camray, and the student's prediction space). Cost per 16-frame window,
every step (bench/l4p_teacher.py): 85.8 M parameters and 2.84 TFLOP for each dense head (depth, flow,
dyn_mask), 82.3 M and 0.27 TFLOP for camray: what the "light" decoders avoid.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from shards.store import fetched_directory, is_url, join
from shards.teacher_fields import HEAD_PROGRAM_FILE, L4P_HOOKS

HEADS_META = "l4p_heads.json"  # written beside the heads' weights by the caching job (an l4p teacher)


class FrozenTeacherHeads:
    def __init__(self, directory: str | Path | None, tasks: tuple[str, ...], latent_dim: int):
        if directory is None:
            raise ValueError("branch.decoders='teacher' needs branch.teacher_heads (the trainer sets CACHE/teacher)")
        if is_url(directory):
            # torch.export.load takes a local file: the programs are fetched, loaded, then deleted.
            with fetched_directory(directory, [HEADS_META, *(HEAD_PROGRAM_FILE.format(field=t) for t in tasks)]) as local:
                self.programs = _load_programs(local, directory, tasks, latent_dim)
        else:
            self.programs = _load_programs(Path(directory), directory, tasks, latent_dim)
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


def _load_programs(local: Path, directory: str | Path, tasks: tuple[str, ...], latent_dim: int) -> dict:
    """The heads' programs of `tasks` from `local` (`directory` itself, or a local copy of it)."""
    meta = local / HEADS_META
    if not meta.exists():
        raise FileNotFoundError(
            f"{directory} holds no exported L4P heads ({HEADS_META}): only a cache made by an l4p teacher "
            "has them (the oracle has none); use student.branch.decoders=light on this cache"
        )
    width = json.loads(meta.read_text())["config"]["embed_dim"]
    if width != latent_dim:
        raise ValueError(f"the teacher heads in {directory} take {width}-wide latents, "
                         f"student.branch.latent_dim is {latent_dim}")
    programs = {}
    for task in tasks:
        path = local / HEAD_PROGRAM_FILE.format(field=task)
        if not path.exists():
            raise FileNotFoundError(
                f"{join(directory, path.name)} is missing: a cache made by an l4p teacher has it (the caching job "
                f"writes it); to remake it from the exported weights: python -m pipeline.teachers.l4p.heads_export "
                f"{directory}"
            )
        module = torch.export.load(str(path)).module()
        for p in module.parameters():
            p.requires_grad_(False)
        programs[task] = module
    return programs
