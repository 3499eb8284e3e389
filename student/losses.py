"""The P4D loss terms, per sample, so that every term can be masked where a sample has no target.

Shapes follow the cache (shards/teacher_fields.py), with a leading batch dim B:
  latents  [B, hooks, N, C]          N = windows * 8 * 16 * 16 tokens
  depth    [B, T, H, W]              metric depth (teacher); the student predicts LOG depth
  flow     [B, 2, T, H, W]           pixels at the map's resolution
  dyn_mask [B, T, H, W]              teacher LOGIT; the student predicts logits
  camray   [B, W, 6, 16, 16, 16]     Plucker rays as the teacher's head gives them (d not normalized)

Why each form (docs/distillation.md): depth is compared in log space so near and far
scenes weigh alike; flow is unbounded pixels, so it is divided by the map side before the penalty
(else it dominates every other term); motion is a BCE against the teacher's soft probability
(the sigmoid of its cached logit).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from shards.teacher_fields import MAP_TASKS

MIN_DEPTH = 1e-3  # depth below this (invalid / zero pixels) is clamped before the log


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def latent_loss_per_sample(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """L_LD of each sample: mean over hooks, tokens and channels of the per-element penalty."""
    target = target.to(pred.dtype)
    if kind == "mse":
        err = F.mse_loss(pred, target, reduction="none")
    elif kind == "smooth_l1":
        err = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
    else:
        raise ValueError(f"latent loss kind must be 'mse' or 'smooth_l1', got {kind!r}")
    return _per_sample_mean(err)


def map_loss_per_sample(task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_ED of one task for each sample. `pred` is in the decoder's output space (log depth, flow
    pixels, motion logits, rays); `target` is the cached teacher map."""
    target = target.to(pred.dtype)
    if task == "depth":
        err = (pred - target.clamp_min(MIN_DEPTH).log()).abs()
    elif task == "flow":
        side = float(target.shape[-1])
        err = ((pred - target) / side).abs()
    elif task == "dyn_mask":
        err = F.binary_cross_entropy_with_logits(pred, target.sigmoid(), reduction="none")
    elif task == "camray":
        err = (pred - target).abs()
    else:
        raise ValueError(f"unknown map task {task!r}; expected one of {MAP_TASKS}")
    return _per_sample_mean(err)


def masked_mean(per_sample: torch.Tensor, valid: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the valid samples' losses; exactly 0 (with gradient) when none is valid.

    `count` overrides the denominator: the trainer passes the valid samples summed over all ranks,
    divided by the world size (DeepSpeed averages the ranks' losses), so the weighting is exact."""
    valid = valid.to(per_sample.dtype)
    total = (per_sample * valid).sum()
    denom = valid.sum() if count is None else count.to(per_sample.dtype)
    return total / denom.clamp_min(1.0)
