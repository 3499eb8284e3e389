"""l4p-tiny: a small seeded random video network with L4P's output layout.

A placeholder until the real L4P classes land (their tiny config will replace this file): a
tubelet patch embedding (2 x 14 x 14), a few pre-norm transformer blocks whose outputs are the hooked
latents, and per-token linear heads unpatchified into depth (exp), backward flow, motion probability
(sigmoid) and Plucker rays. Random weights: the outputs mean nothing, but their shapes, dtypes and
cost structure are those of a real teacher, so the whole job runs on any video.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.config import TeacherConfig
from pipeline.teachers.base import (
    INPUT_SIZE, PATCH, TUBELET, Teacher, TeacherIdentity, TeacherInput, hash_id, output_shapes,
)

TINY_DIM = 64
TINY_BLOCKS = 4
TINY_HEADS = 4
TINY_HOOKS = 4  # the output of every block is hooked, like L4P's four taps
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    position = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table.float()


class TinyVideoNet(nn.Module):
    def __init__(self, dim: int, blocks: int, heads: int):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, (TUBELET, PATCH, PATCH), (TUBELET, PATCH, PATCH))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(blocks)
        )
        pixels = TUBELET * PATCH * PATCH
        self.heads = nn.ModuleDict(
            {"depth": nn.Linear(dim, pixels), "flow": nn.Linear(dim, 2 * pixels),
             "dyn_mask": nn.Linear(dim, pixels), "camray": nn.Linear(dim, TUBELET * 6)}
        )

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """video [B, 3, T, 224, 224] normalized -> latents [B, hooks, N, C] and maps."""
        b, _, t, h, w = video.shape
        x = self.patch_embed(video)
        gt, gh, gw = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        x = x + sinusoid_table(x.shape[1], x.shape[2]).to(x)
        hooked = []
        for block in self.blocks:
            x = block(x)
            hooked.append(x)
        out = {"latents": torch.stack(hooked, 1)}
        for name, channels in (("depth", 1), ("flow", 2), ("dyn_mask", 1)):
            y = self.heads[name](x).reshape(b, gt, gh, gw, TUBELET, channels, PATCH, PATCH)
            out[name] = y.permute(0, 5, 1, 4, 2, 6, 3, 7).reshape(b, channels, t, h, w)
        rays = self.heads["camray"](x).reshape(b, gt, gh, gw, TUBELET, 6).permute(0, 5, 1, 4, 2, 3)
        out["camray"] = rays.reshape(b, 6, t, gh, gw)
        return out


class L4PTinyTeacher(Teacher):
    @staticmethod
    def _build(config: TeacherConfig) -> TinyVideoNet:
        torch.manual_seed(config.seed)
        return TinyVideoNet(config.latent_dim or TINY_DIM, TINY_BLOCKS, TINY_HEADS).eval()

    @classmethod
    def identity(cls, config: TeacherConfig, num_frames: int) -> TeacherIdentity:
        # Building the tiny net is cheap, so the id can hash the real weights.
        net = cls._build(config)
        weights = b"".join(t.numpy().tobytes() for t in net.state_dict().values())
        arch = {"dim": config.latent_dim or TINY_DIM, "blocks": TINY_BLOCKS, "heads": TINY_HEADS}
        return TeacherIdentity(
            teacher_id=hash_id("l4p-tiny", arch, weights),
            input_size=INPUT_SIZE,
            shapes=output_shapes(num_frames, TINY_HOOKS, config.latent_dim or TINY_DIM),
        )

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        self.net = self._build(config)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)

    @torch.no_grad()
    def predict(self, clips: list[TeacherInput]) -> list[dict[str, np.ndarray]]:
        frames = torch.from_numpy(np.stack([c.frames for c in clips]))  # [B, T, H, W, 3]
        video = (frames.permute(0, 4, 1, 2, 3).float() / 255.0 - self.mean) / self.std
        out = self.net(video)
        rays = out["camray"]
        d = nn.functional.normalize(rays[:, :3], dim=1)
        m = rays[:, 3:] - (rays[:, 3:] * d).sum(1, keepdim=True) * d  # Plucker: m orthogonal to d
        maps = {
            "latents": out["latents"],
            "depth": out["depth"][:, 0].exp(),
            "flow": out["flow"],
            "dyn_mask": out["dyn_mask"][:, 0].sigmoid(),
            "camray": torch.cat([d, m], 1),
        }
        return [{k: v[i].float().numpy() for k, v in maps.items()} for i in range(len(clips))]

