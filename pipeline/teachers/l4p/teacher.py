"""The L4P teachers of the caching job: `l4p` (the released architecture, loads the official
checkpoint) and `l4p-tiny` (the same classes with the TINY config; seeded random weights unless a
checkpoint is given). Clips of any length are mirror-padded and cut into 16-frame windows (stride 8);
per-frame maps are merged across windows as the released code merges them (windows.py), latents and
camray stay per window. What is cached is what 4D-RGPT distills: depth (exp of the head), flow, the
motion LOGIT and the raw 6-channel rays."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from manifests.cache_key import file_sha256
from pipeline.config import TeacherConfig
from pipeline.teachers.base import Teacher, TeacherIdentity, TeacherInput, hash_id
from pipeline.teachers.l4p.checkpoint import load_state_dict_file, load_strict, state_dict_sha256
from pipeline.teachers.l4p.config import FULL, TINY, L4PConfig
from pipeline.teachers.l4p.heads_export import export_head_programs, export_heads
from pipeline.teachers.l4p.model import L4PModel
from pipeline.teachers.l4p.windows import crop, merge_depth, merge_dyn_mask, merge_flow
from shards.teacher_fields import INPUT_SIZE, clip_window_starts, teacher_shapes, window_frame_indices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Bump when what predict returns changes for the same architecture and weights (merge rules, output
# transforms): it enters the teacher id, so every cache_key changes and old caches recompute once.
# 2: the released heads' resamplers, the released merge rules, dyn_mask as the logit, camray raw.
OUTPUTS_VERSION = 2


class L4PTeacher(Teacher):
    name = "l4p"
    arch: L4PConfig = FULL

    @classmethod
    def _check(cls, config: TeacherConfig) -> None:
        if config.latent_dim not in (None, cls.arch.embed_dim):
            raise ValueError(f"teacher {cls.name} has latent width {cls.arch.embed_dim}; "
                             f"teacher.latent_dim={config.latent_dim} cannot change it")

    @classmethod
    def _random_model(cls, config: TeacherConfig) -> L4PModel:
        torch.manual_seed(config.seed)
        return L4PModel(cls.arch)

    @classmethod
    def identity(cls, config: TeacherConfig, num_frames: int) -> TeacherIdentity:
        cls._check(config)
        if config.checkpoint:
            # The file's bytes: hashing them needs no torch load (the full checkpoint is ~5.7 GB).
            weights = "file:" + file_sha256(config.checkpoint)
        else:
            weights = "seeded:" + state_dict_sha256(cls._random_model(config).state_dict())
        return TeacherIdentity(
            teacher_id=hash_id(cls.name, dataclasses.asdict(cls.arch), weights, {"outputs": OUTPUTS_VERSION}),
            input_size=INPUT_SIZE,
            shapes=teacher_shapes(num_frames, len(cls.arch.hooks), cls.arch.embed_dim),
        )

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        self._check(config)
        use_gpu = config.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.dtype = DTYPES[config.dtype]
        if config.checkpoint:
            with torch.device("meta"):  # the 1 B model takes the checkpoint's tensors, no random init
                model = L4PModel(self.arch)
            load_strict(model, load_state_dict_file(config.checkpoint))
        else:
            model = self._random_model(config)
        self.model = model.eval().requires_grad_(False).to(self.device, self.dtype)
        shape = (1, 3, 1, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(shape)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(shape)

    def export(self, directory: str | Path) -> Path:
        """The frozen DPT heads alone, so a student can decode maps without the encoder: their weights,
        and the torch.export programs the student's default D_m loads (written once per weights)."""
        directory = export_heads(self.model, self.arch, directory)
        export_head_programs(directory)
        return directory

    @torch.inference_mode()
    def predict(self, clips: list[TeacherInput]) -> list[dict[str, torch.Tensor]]:
        """float32 tensors on the teacher's device: the caching job encodes them there."""
        frames = np.stack([c.frames for c in clips])  # [B, T, 224, 224, 3]
        num_clips, num_frames = frames.shape[:2]
        windows = window_frame_indices(num_frames)  # [W, 16] clip frame of every window slot
        starts = clip_window_starts(num_frames)
        video = torch.from_numpy(frames[:, windows].reshape(-1, windows.shape[1], *frames.shape[2:]))
        outputs = [self._forward(video[i:i + self.config.batch_size])
                   for i in range(0, len(video), self.config.batch_size)]
        out = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        results = []
        for b in range(num_clips):
            w = slice(b * len(starts), (b + 1) * len(starts))
            latents = out["latents"][w]  # [W, hooks, N, C] -> window-major tokens
            results.append({
                "latents": latents.transpose(0, 1).reshape(latents.shape[1], -1, latents.shape[3]),
                "depth": _merged(merge_depth, out["depth"][w, 0], starts, num_frames),
                "flow": _merged(merge_flow, out["flow_2d_backward"][w], starts, num_frames),
                "dyn_mask": _merged(merge_dyn_mask, out["dyn_mask"][w], starts, num_frames)[0],
                "camray": out["camray"][w],
            })
        return results

    def _forward(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """windows [n, 16, 224, 224, 3] uint8 -> float32 outputs per window, on the device."""
        video = windows.to(self.device).permute(0, 4, 1, 2, 3).float().div_(255)
        video = ((video - self.mean) / self.std).to(self.dtype)
        return {k: v.float() for k, v in self.model(video).items()}


def _merged(merge, windows: torch.Tensor, starts: list[int], num_frames: int) -> torch.Tensor:
    """A per-frame map of the clip from its windows [W, ..., 16, H, W] (windows.py's rules), on the
    windows' device. One window (T <= 16, as 4D-RGPT caches) has nothing to merge: it stays where it is;
    several are merged by the numpy rules on the CPU."""
    if len(starts) == 1:
        return windows[0][..., :num_frames, :, :]
    merged = crop(merge(list(windows.cpu().numpy()), starts), num_frames)
    return torch.from_numpy(np.ascontiguousarray(merged)).to(windows.device)


class L4PTinyTeacher(L4PTeacher):
    name = "l4p-tiny"
    arch = TINY
