"""L4P's dense task head: a 3-D (video) DPT over four encoder taps, plus the per-task output
transforms and an analytic cost model.

Parameter names follow the official checkpoint under `l4p_model.task_heads.<task>.task_head.dpt.`
so it loads strictly (checkpoint.normalize_keys folds its second spelling scratch.layer_rn.{0-3} into
scratch.layer{1-4}_rn). Shapes for the full model, one 16-frame window (token grid 8 x 16 x 16):

  tap i (i = 0..3, hook order)  [B, 2048, 1408] -> [B, 1408, 8, 16, 16]
  act_postprocess.i.0  Conv3d 1x1x1 1408 -> dpt_channels[i]
  act_postprocess.i.1  resampler to a pyramid: (8, 64, 64), (8, 32, 32), (8, 16, 16), (8, 8, 8)
  scratch.layer{i+1}_rn  Conv3d 3x3x3, no bias, dpt_channels[i] -> 256
  scratch.refinenet4..1  RefineNet fusion, deepest first, each ending x2 in space -> (8, 128, 128)
  head1  Conv3d 3x3x3 256 -> 128; trilinear resize to (16, S, S); head2 Conv3d 3x3x3 128 -> 128,
         ReLU, Conv3d 1x1x1 128 -> C   (S = 224 for the dense maps, 16 for camray)

From L4P.md: the tap indices, the 1x1x1 widths [256, 512, 1024, 1024], "a resampler", the bias-free
3x3x3 conv to 256, four RefineNet blocks with trilinear upsampling, head1 256 -> 128, the trilinear
resize, head2 (128 -> 128, ReLU, 1x1 -> C), the module names, the output transforms, and the budget
(~86 M params and ~2.8 TFLOP per head per window).

Inferred (L4P.md does not state them and the checkpoint is not available here), following 2-D DPT
lifted to 3-D with time left at the token rate:
- resamplers: ConvTranspose3d kernel = stride = (1, 4, 4) and (1, 2, 2), Identity (kept at index 1 so
  the names line up), Conv3d kernel 3 stride (1, 2, 2) padding 1; time is never resampled inside the
  pyramid, only by the final resize (8 -> 16 frames).
- 3x3x3 kernels (padding 1) in the fusion units, head1 and head2, all with bias except layer*_rn.
- fusion order out = resConfUnit2(x + resConfUnit1(skip)), then x2 in space, then out_conv 1x1x1;
  refinenet4 has no skip, but like 2-D DPT (which L4P's heads derive from) it still registers a
  resConfUnit1 that never runs, so the checkpoint's `refinenet4.resConfUnit1.*` keys have a home.
- align_corners=True for every trilinear resize (2-D DPT's choice).
With these choices a FULL head has 80.2 M parameters (L4P.md: ~86 M) and costs 1.84 TFLOP per window
at 224 x 224 (1.13 TFLOP for camray at 16 x 16; L4P.md: ~2.8 TFLOP); see `dpt_flops`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import L4PConfig

NUM_TAPS = 4


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, 3, padding=1)
        self.conv2 = nn.Conv3d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-activation: the skip carries x itself, so the ReLU must not run in place.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: fold a pyramid level (skip) into the coarser path, refine, go x2 in space."""

    def __init__(self, features: int, has_skip: bool):
        super().__init__()
        self.has_skip = has_skip
        self.resConfUnit1 = ResidualConvUnit(features)  # registered even when unused (see module doc)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv3d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if (skip is not None) != self.has_skip:
            raise ValueError("a fusion block takes a skip input exactly when it was built with one")
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, channels: Sequence[int], features: int):
        super().__init__()
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = (
            nn.Conv3d(c, features, 3, padding=1, bias=False) for c in channels
        )
        self.refinenet1, self.refinenet2, self.refinenet3 = (
            FeatureFusionBlock(features, has_skip=True) for _ in range(3)
        )
        self.refinenet4 = FeatureFusionBlock(features, has_skip=False)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = (
            conv(x) for conv, x in zip((self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn), pyramid)
        )
        path = self.refinenet4(l4)
        path = self.refinenet3(path, l3)
        path = self.refinenet2(path, l2)
        return self.refinenet1(path, l1)


def _resampler(tap: int, channels: int) -> nn.Module:
    """Tap i of the pyramid goes to 4x, 2x, 1x and 1/2x the token grid in space."""
    if tap == 0:
        return nn.ConvTranspose3d(channels, channels, (1, 4, 4), stride=(1, 4, 4))
    if tap == 1:
        return nn.ConvTranspose3d(channels, channels, (1, 2, 2), stride=(1, 2, 2))
    if tap == 2:
        return nn.Identity()
    return nn.Conv3d(channels, channels, 3, stride=(1, 2, 2), padding=1)


class DPTHead(nn.Module):
    """Four hooked token tensors [B, N, C] (hook order) -> raw map [B, out_channels, T, S, S]."""

    def __init__(self, config: L4PConfig, out_channels: int, out_size: int):
        super().__init__()
        if len(config.dpt_channels) != NUM_TAPS or len(config.hooks) != NUM_TAPS:
            raise ValueError(
                f"the DPT head fuses exactly {NUM_TAPS} taps: got hooks={config.hooks}, "
                f"dpt_channels={config.dpt_channels}"
            )
        self.config = config
        self.out_size = out_size
        self.act_postprocess = nn.ModuleList(
            nn.Sequential(nn.Conv3d(config.embed_dim, c, 1), _resampler(i, c))
            for i, c in enumerate(config.dpt_channels)
        )
        self.scratch = Scratch(config.dpt_channels, config.dpt_features)
        self.head1 = nn.Conv3d(config.dpt_features, config.head_hidden, 3, padding=1)
        self.head2 = nn.Sequential(
            nn.Conv3d(config.head_hidden, config.head_hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(config.head_hidden, out_channels, 1),
        )

    def forward(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        grid = self.config.grid
        if len(tokens) != NUM_TAPS:
            raise ValueError(f"expected {NUM_TAPS} hooked token tensors, got {len(tokens)}")
        pyramid = []
        for x, project in zip(tokens, self.act_postprocess):
            if x.ndim != 3 or x.shape[1:] != (self.config.num_tokens, self.config.embed_dim):
                raise ValueError(
                    f"expected tokens [B, {self.config.num_tokens}, {self.config.embed_dim}], got {tuple(x.shape)}"
                )
            pyramid.append(project(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)))
        x = self.head1(self.scratch(pyramid))
        x = F.interpolate(
            x, size=(self.config.num_frames, self.out_size, self.out_size), mode="trilinear", align_corners=True
        )
        return self.head2(x)


def apply_output_transform(task: str, raw: torch.Tensor) -> torch.Tensor:
    """Raw head output -> the value L4P reports (L4P.md table).

    depth: exp (positive, metric-ish). flow_2d_backward: identity, (u, v) in 224-px units.
    dyn_mask: identity, the logit (callers take sigmoid; > 0.5 = moving).
    camray: raw (d, m) -> (d / |d|, m_perp / |d|) with m_perp = m minus its component along d. The line a
    Plucker pair encodes (closest point d x m / |d|^2, direction d) is unchanged by a common rescale and
    by m's component along d (d x d = 0), so this enforces |d| = 1 and m . d = 0 without moving the ray.
    """
    if task == "depth":
        return raw.exp()
    if task in ("flow_2d_backward", "dyn_mask"):
        return raw
    if task == "camray":
        if raw.shape[1] != 6:
            raise ValueError(f"camray expects 6 channels (d, m), got {raw.shape[1]}")
        d, m = raw[:, :3], raw[:, 3:]
        norm = d.norm(dim=1, keepdim=True).clamp_min(1e-6)
        d, m = d / norm, m / norm
        m = m - (m * d).sum(dim=1, keepdim=True) * d
        return torch.cat([d, m], dim=1)
    raise ValueError(f"unknown L4P task {task!r}; known: depth, flow_2d_backward, dyn_mask, camray")


def dpt_flops(config: L4PConfig, out_channels: int, out_size: int) -> float:
    """FLOPs (2 x multiply-accumulates) of one DPTHead forward on one window; counts every conv and
    transposed conv at the resolution it runs at; biases, ReLUs, adds and resizes are left out."""
    t, h, w = config.grid
    tokens = t * h * w
    c0, c1, c2, c3 = config.dpt_channels
    f, hidden = config.dpt_features, config.head_hidden
    coarse = t * ((h - 1) // 2 + 1) * ((w - 1) // 2 + 1)  # tap 3 after its stride-2 conv
    levels = (16 * tokens, 4 * tokens, tokens, coarse)  # voxels of the pyramid, finest first

    macs = tokens * config.embed_dim * (c0 + c1 + c2 + c3)  # act_postprocess.i.0
    macs += tokens * 16 * c0 * c0 + tokens * 4 * c1 * c1 + coarse * 27 * c3 * c3  # resamplers
    macs += sum(v * 27 * c * f for v, c in zip(levels, config.dpt_channels))  # layer*_rn
    unit = 2 * 27 * f * f  # one resConfUnit per voxel
    macs += coarse * unit + sum(2 * v * unit for v in levels[:3])  # refinenet4's resConfUnit1 never runs
    macs += sum(4 * v * f * f for v in levels)  # out_conv after the x2 upsample
    macs += 4 * levels[0] * 27 * f * hidden  # head1 at refinenet1's output
    macs += config.num_frames * out_size**2 * (27 * hidden * hidden + hidden * out_channels)  # head2
    return 2.0 * macs
