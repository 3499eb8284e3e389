"""The P4D branch (training only): D_4DP onto the teacher's latent grid and D_m onto its 4D maps.

Teacher layout (shards/teacher_fields.py, the cache's contract): a clip of T frames is seen as W
windows of 16 frames of the mirror-padded clip; per window 8 temporal slots (tubelet 2) x 16 x 16
tokens, window-major, (t, h, w) row-major.

D_4DP takes the LLM hidden states at a video's visual-token positions as a grid [slots, rows, cols, D],
picks for every teacher slot the student slot that holds the same frame (every 2nd frame), resizes the
spatial grid to 16 x 16 (bilinear, antialiased: torchvision's Resize, as released) and maps D -> C with
one head per hooked teacher layer (released: a Linear, weights normal(0, 0.1), bias 0).

D_m, per window, then each clip frame the mean of the windows that show it: "teacher" (the default,
released) runs the frozen L4P DPT heads on the predicted latents (student/teacher_heads.py); "light"
is, per task, a token-wise MLP over the concatenated hook outputs that un-patchifies each token into
its 2 frames x (S/16)^2 pixels, far cheaper than the heads (bench/train_step.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shards.teacher_fields import GRID, MAP_CHANNELS, MAP_SIZE, SLOTS, TUBELET, WINDOW, window_frame_indices
from student.config import BranchConfig
from student.teacher_heads import FrozenTeacherHeads


def window_frames(num_frames: int) -> torch.Tensor:
    """[W, 16] clip frame shown in every slot of every teacher window."""
    return torch.from_numpy(window_frame_indices(num_frames))


LINEAR_INIT_STD = 0.1  # the released D_4DP Linear's weights: normal(0, 0.1), bias 0


def _head(in_dim: int, out_dim: int, cfg: BranchConfig) -> nn.Module:
    if cfg.head == "linear":
        head = nn.Linear(in_dim, out_dim)
        nn.init.normal_(head.weight, mean=0.0, std=LINEAR_INIT_STD)
        nn.init.zeros_(head.bias)
        return head
    # The paper's D_4DP head: 3 layers, GELU.
    return nn.Sequential(
        nn.Linear(in_dim, cfg.mlp_hidden), nn.GELU(), nn.Linear(cfg.mlp_hidden, cfg.mlp_hidden), nn.GELU(),
        nn.Linear(cfg.mlp_hidden, out_dim),
    )


class LatentDecoder(nn.Module):
    """D_4DP: student visual hidden states -> teacher latent grid [B, hooks, W * 8 * 16 * 16, C]."""

    def __init__(self, hidden: int, cfg: BranchConfig):
        super().__init__()
        self.heads = nn.ModuleList(_head(hidden, cfg.latent_dim, cfg) for _ in range(cfg.hooks))

    def forward(self, grid: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
        """grid [B, slots, rows, cols, D]; slot_index [W * 8]: the student slot of each teacher slot."""
        b, _, rows, cols, d = grid.shape
        x = grid[:, slot_index]  # [B, W8, rows, cols, D]
        x = x.flatten(0, 1).permute(0, 3, 1, 2)
        if (rows, cols) != (GRID, GRID):
            # In float32: the antialiased kernel has no bfloat16 version on the CPU.
            x = F.interpolate(x.float(), size=(GRID, GRID), mode="bilinear", align_corners=False,
                              antialias=True).to(grid.dtype)
        x = x.permute(0, 2, 3, 1).reshape(b, -1, d)  # [B, W8 * 256, D], (t, h, w) row-major
        return torch.stack([head(x) for head in self.heads], dim=1)


class LightMapDecoder(nn.Module):
    """One task's D_m: tokens [B, N, hooks * C] -> per-window maps [B, W, ch, 16, S, S]."""

    def __init__(self, in_dim: int, hidden: int, channels: int, size: int):
        super().__init__()
        if size % GRID:
            raise ValueError(f"map size {size} is not a multiple of the {GRID}-token grid")
        self.channels, self.patch = channels, size // GRID
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
            nn.Linear(hidden, channels * TUBELET * self.patch**2),
        )

    def forward(self, tokens: torch.Tensor, windows: int) -> torch.Tensor:
        b, g, p, c = tokens.shape[0], GRID, self.patch, self.channels
        x = self.mlp(tokens).reshape(b, windows, SLOTS, g, g, c, TUBELET, p, p)
        # (w, slot, gh, gw, ch, tubelet, ph, pw) -> (w, ch, slot, tubelet, gh, ph, gw, pw)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
        return x.reshape(b, windows, c, WINDOW, g * p, g * p)


def merge_windows(per_window: torch.Tensor, frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[B, W, ch, 16, H, W'] -> [B, ch, T, H, W']: each clip frame is the mean of the window slots
    that show it (mirror-padded slots included: they show that frame too)."""
    onehot = F.one_hot(frames.flatten(), num_frames).to(per_window.dtype)  # [W * 16, T]
    weights = onehot / onehot.sum(dim=0, keepdim=True).clamp_min(1.0)
    x = per_window.transpose(2, 3).flatten(1, 2)  # [B, W * 16, ch, H, W']
    return torch.einsum("bkchw,kt->bcthw", x, weights)


class P4DBranch(nn.Module):
    def __init__(self, hidden: int, cfg: BranchConfig, map_size: int = MAP_SIZE):
        super().__init__()
        self.cfg = cfg
        self.latent = LatentDecoder(hidden, cfg)
        in_dim = cfg.hooks * cfg.latent_dim
        light = cfg.decoders == "light"
        self.maps = nn.ModuleDict(
            {t: LightMapDecoder(in_dim, cfg.light_hidden, MAP_CHANNELS[t], GRID if t == "camray" else map_size)
             for t in (cfg.tasks if light else ())}
        )
        # Not an nn.Module attribute: frozen, replicated, invisible to the optimizer and to ZeRO-3.
        self.teacher_heads = None if light else FrozenTeacherHeads(cfg.teacher_heads, cfg.tasks, cfg.latent_dim)

    def forward(
        self, grid: torch.Tensor, frames: torch.Tensor, num_frames: int, frames_per_slot: int
    ) -> dict[str, torch.Tensor]:
        """grid [B, slots, rows, cols, D] (`frames_per_slot` clip frames per student slot: Qwen2.5-VL 2,
        LLaVA-OneVision 1); frames [W, 16] from window_frames. -> latents [B, hooks, N, C] and per task its map in the loss's prediction space:
        depth (log) [B, T, S, S], flow [B, 2, T, S, S], dyn_mask (logits) [B, T, S, S],
        camray [B, W, 6, 16, 16, 16]."""
        windows = frames.shape[0]
        slot_index = frames[:, ::TUBELET].flatten() // frames_per_slot
        latents = self.latent(grid, slot_index)
        tokens = latents.permute(0, 2, 1, 3).flatten(2)  # [B, N, hooks * C]
        out = {"latents": latents}
        for task in self.cfg.tasks:
            if self.teacher_heads is not None:
                per_window = self.teacher_heads(task, latents, windows)
            else:
                per_window = self.maps[task](tokens, windows)
            if task == "camray":
                out[task] = per_window
                continue
            merged = merge_windows(per_window, frames, num_frames)
            out[task] = merged if task == "flow" else merged[:, 0]
        return out
