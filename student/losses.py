"""The P4D loss terms, per sample, so that every term can be masked where a sample has no target.

Shapes follow the cache (shards/teacher_fields.py), with a leading batch dim B:
  latents  [B, hooks, N, C]          N = windows * 8 * 16 * 16 tokens
  depth    [B, T, H, W]              metric depth (teacher; 0 = no depth); the student predicts LOG depth
  flow     [B, 2, T, H, W]           backward flow in 224-pixel units
  dyn_mask [B, T, H, W]              teacher LOGIT; the student predicts logits
  camray   [B, W, 6, 16, 16, 16]     Plucker rays as the teacher's head gives them (d not normalized)

The released forms (docs/distillation.md) are the defaults: one penalty for every term, Smooth-L1
(beta 1) or, as the release's README says, MSE, on
  latents   as they are
  depth     log(depth + 1e-8) on both sides: log(exp(pred) + 1e-8) for the student's log depth
  flow      raw pixels (hence the released weight 0.001: flow is unbounded)
  dyn_mask  the student's logits against the teacher's logits
  camray    the raw 6-channel rays
Kept alternatives (loss.ed_kind, loss.ed_forms): the L1 penalty; flow divided by the map side
("map_side", so that it cannot dominate equal weights); motion as a BCE against the teacher's
probability, the sigmoid of its cached logit ("bce").
Depth pixels the cache marks invalid (0) carry no target. The teacher's exp() never gives 0, so on an
L4P cache this is the released form exactly; the oracle's scenes may have such pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shards.teacher_fields import MAP_TASKS

PENALTIES = ("smooth_l1", "mse", "l1")
# Per task: its forms, the released one first.
ED_FORMS = {"depth": ("log",), "flow": ("pixels", "map_side"), "dyn_mask": ("logit", "bce"), "camray": ("rays",)}
RELEASED_FORMS = {task: forms[0] for task, forms in ED_FORMS.items()}
DEPTH_EPS = 1e-8  # added to depth before the log, on both sides


def penalty(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Element-wise penalty of `kind` (PENALTIES)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
    if kind == "mse":
        return F.mse_loss(pred, target, reduction="none")
    if kind == "l1":
        return F.l1_loss(pred, target, reduction="none")
    raise ValueError(f"loss kind must be one of {PENALTIES}, got {kind!r}")


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def latent_loss_per_sample(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """L_LD of each sample: mean over hooks, tokens and channels of the per-element penalty."""
    return _per_sample_mean(penalty(pred.float(), target.float(), kind))


def map_loss_per_sample(task: str, pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1",
                        form: str | None = None) -> torch.Tensor:
    """L_ED of one task for each sample, in float32. `pred` is in the decoder's output space (log depth,
    flow pixels, motion logits, rays); `target` is the cached teacher map; `form` one of ED_FORMS[task]
    (None: the released one)."""
    if task not in ED_FORMS:
        raise ValueError(f"unknown map task {task!r}; expected one of {MAP_TASKS}")
    form = RELEASED_FORMS[task] if form is None else form
    if form not in ED_FORMS[task]:
        raise ValueError(f"{task}: form must be one of {ED_FORMS[task]}, got {form!r}")
    pred, target = pred.float(), target.float()
    if task == "depth":
        has_depth = (target > 0).float()
        log_eps = torch.full_like(pred, math.log(DEPTH_EPS))
        err = penalty(torch.logaddexp(pred, log_eps), (target + DEPTH_EPS).log(), kind) * has_depth
        return err.flatten(1).sum(dim=1) / has_depth.flatten(1).sum(dim=1).clamp_min(1.0)
    if form == "map_side":
        side = float(target.shape[-1])
        return _per_sample_mean(penalty(pred / side, target / side, kind))
    if form == "bce":
        return _per_sample_mean(F.binary_cross_entropy_with_logits(pred, target.sigmoid(), reduction="none"))
    return _per_sample_mean(penalty(pred, target, kind))


def masked_mean(per_sample: torch.Tensor, valid: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the valid samples' losses; exactly 0 (with gradient) when none is valid.

    `count` overrides the denominator: the trainer passes the valid samples summed over all ranks,
    divided by the world size (DeepSpeed averages the ranks' losses), so the weighting is exact."""
    valid = valid.to(per_sample.dtype)
    total = (per_sample * valid).sum()
    denom = valid.sum() if count is None else count.to(per_sample.dtype)
    return total / denom.clamp_min(1.0)
