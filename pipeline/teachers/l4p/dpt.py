"""L4P's dense task head: a 3-D (video) DPT over four encoder taps, the per-task output transform and
an analytic cost model.

Parameter names are the released checkpoint's under `l4p_model.task_heads.<task>.task_head.dpt.`, so
it loads strictly (the checkpoint also spells scratch.layer{1-4}_rn as scratch.layer_rn.{0-3}:
checkpoint.normalize_keys folds that alias). A head, for one window of num_frames frames (token grid
(t, h, w) = (8, 16, 16) for the full model; the factors are the head's HeadConfig, see config.py):

  tap i (hook order)      [B, t * h * w, embed] -> [B, embed, t, h, w]   (tokens in (t, h, w) order)
  act_postprocess.i.0     Conv3d 1x1x1 embed -> dpt_channels[i]
  act_postprocess.i.1     resampler by 2**resample_log2[i] (ConvTranspose3d up / strided Conv3d down /
                          Identity): dense heads -> (16, 64, 64), (16, 32, 32), (8, 16, 16), (4, 8, 8)
  scratch.layer{i+1}_rn   Conv3d 3x3x3, no bias, -> dpt_features
  scratch.refinenet4..1   fusion, deepest first: out = path + resConfUnit1(skip) (refinenet4 has no
                          skip, yet its resConfUnit1 weights exist), resConfUnit2, trilinear upsampling
                          (align_corners=True) by fusion_scale, out_conv 1x1x1; refinenet4's output
                          is cut to the next level's (t, h) (a no-op for these shapes)
  head1                   Sequential(Conv3d 3x3x3 dpt_features -> head_hidden): key head1.0
  resize                  trilinear (align_corners=True) to (num_frames, size, size) when it differs
  head2                   Conv3d 3x3x3 head_hidden -> head_hidden, ReLU, Conv3d 1x1x1 -> channels
A residual unit is ReLU, Conv3d 3x3x3, ReLU, Conv3d 3x3x3 (both with bias), plus its input.

These are facts of the released code (NVlabs/L4P at 8701a4b, read for facts only): the full config
gives the released key list and shapes key for key (tests/data/l4p_state_dict.tsv) and its per-head
parameters and FLOPs (dense 85,845,889 and 2.839 TFLOP per window, camray 82,307,590 and 0.269 TFLOP).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadConfig, L4PConfig

NUM_TAPS = 4

Shape = tuple[int, int, int]


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, 3, padding=1)
        self.conv2 = nn.Conv3d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-activation: the skip carries x itself, so the ReLU must not run in place.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Fold a pyramid level (skip) into the coarser path, refine, upsample by `scale`."""

    def __init__(self, features: int, scale: Shape):
        super().__init__()
        self.scale = tuple(scale)
        self.resConfUnit1 = ResidualConvUnit(features)  # refinenet4 never runs it, the checkpoint holds it
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv3d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=self.scale, mode="trilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, channels: Sequence[int], features: int, fusion_scale: Sequence[Shape]):
        super().__init__()
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = (
            nn.Conv3d(c, features, 3, padding=1, bias=False) for c in channels
        )
        self.refinenet1, self.refinenet2, self.refinenet3, self.refinenet4 = (
            FeatureFusionBlock(features, scale) for scale in fusion_scale
        )

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = (
            conv(x) for conv, x in zip((self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn), pyramid)
        )
        # The released code cuts refinenet4's output to the next level's time and height (never width).
        path = self.refinenet4(l4)[:, :, :l3.shape[2], :l3.shape[3]]
        path = self.refinenet3(path, l3)
        path = self.refinenet2(path, l2)
        return self.refinenet1(path, l1)


def _resampler_kind(log2: Shape) -> str:
    if all(f == 0 for f in log2):
        return "identity"
    if all(f >= 0 for f in log2):
        return "up"
    if all(f <= 0 for f in log2):
        return "down"
    raise ValueError(f"a resampler goes up or down in every axis, not both: log2 factors {log2}")


def _down_geometry(log2: Shape) -> tuple[Shape, Shape, Shape]:
    """(stride, kernel, padding) of a downsampling resampler."""
    stride = tuple(2**-f for f in log2)
    return stride, tuple(s // 2 * 2 + 1 for s in stride), tuple(s // 2 for s in stride)


def resampler(channels: int, log2: Shape) -> nn.Module:
    """act_postprocess.i.1: the tap's grid scaled by 2**log2 per axis (t, h, w)."""
    kind = _resampler_kind(log2)
    if kind == "identity":
        return nn.Identity()
    if kind == "up":
        stride = tuple(2**f for f in log2)
        return nn.ConvTranspose3d(channels, channels, stride, stride=stride)
    stride, kernel, padding = _down_geometry(log2)
    return nn.Conv3d(channels, channels, kernel, stride=stride, padding=padding)


def _check_head(config: L4PConfig, head: HeadConfig) -> None:
    if not (len(config.dpt_channels) == len(config.hooks) == len(head.resample_log2) == len(head.fusion_scale)
            == NUM_TAPS):
        raise ValueError(
            f"the DPT head fuses exactly {NUM_TAPS} taps: got hooks={config.hooks}, dpt_channels="
            f"{config.dpt_channels}, resample_log2={head.resample_log2}, fusion_scale={head.fusion_scale}"
        )


class DPTHead(nn.Module):
    """Four hooked token tensors [B, N, C] (hook order) -> raw map [B, channels, num_frames, size, size]."""

    def __init__(self, config: L4PConfig, head: HeadConfig):
        super().__init__()
        _check_head(config, head)
        self.config = config
        self.out_shape = (config.num_frames, head.size, head.size)
        self.act_postprocess = nn.ModuleList(
            nn.Sequential(nn.Conv3d(config.embed_dim, c, 1), resampler(c, log2))
            for c, log2 in zip(config.dpt_channels, head.resample_log2)
        )
        self.scratch = Scratch(config.dpt_channels, config.dpt_features, head.fusion_scale)
        self.head1 = nn.Sequential(nn.Conv3d(config.dpt_features, config.head_hidden, 3, padding=1))
        self.head2 = nn.Sequential(
            nn.Conv3d(config.head_hidden, config.head_hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(config.head_hidden, head.channels, 1),
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
        if x.shape[2:] != self.out_shape:
            x = F.interpolate(x, size=self.out_shape, mode="trilinear", align_corners=True)
        return self.head2(x)


def apply_output_transform(task: str, raw: torch.Tensor) -> torch.Tensor:
    """Raw head output -> the value L4P reports and 4D-RGPT distills: depth is exp of the raw channel;
    flow_2d_backward ((u, v) in 224-px units), dyn_mask (the logit) and camray (the raw 6-channel ray
    map (d, m), d not normalized) are the raw output itself."""
    if task == "depth":
        return raw.exp()
    if task in ("flow_2d_backward", "dyn_mask", "camray"):
        return raw
    raise ValueError(f"unknown L4P task {task!r}; known: depth, flow_2d_backward, dyn_mask, camray")


def _scaled(shape: Shape, factors: Sequence[int]) -> Shape:
    return tuple(n * s for n, s in zip(shape, factors))


def _resampled(shape: Shape, log2: Shape) -> Shape:
    kind = _resampler_kind(log2)
    if kind == "identity":
        return shape
    if kind == "up":
        return _scaled(shape, [2**f for f in log2])
    stride, kernel, padding = _down_geometry(log2)
    return tuple((n + 2 * p - k) // s + 1 for n, s, k, p in zip(shape, stride, kernel, padding))


def dpt_flops(config: L4PConfig, head: HeadConfig) -> float:
    """FLOPs (2 x multiply-accumulates) of one DPTHead forward on one window: every conv and transposed
    conv at the resolution it runs at (as torch's FlopCounterMode counts them); biases, ReLUs, adds and
    interpolations are left out."""
    _check_head(config, head)
    voxels = math.prod
    f, hidden = config.dpt_features, config.head_hidden
    macs = 0
    levels = []
    for c, log2 in zip(config.dpt_channels, head.resample_log2):
        macs += voxels(config.grid) * config.embed_dim * c  # act_postprocess.i.0
        level = _resampled(config.grid, log2)
        kind = _resampler_kind(log2)
        if kind == "up":  # every input voxel scatters a whole kernel
            macs += voxels(config.grid) * c * c * voxels([2**g for g in log2])
        elif kind == "down":
            macs += voxels(level) * c * c * voxels(_down_geometry(log2)[1])
        macs += voxels(level) * 27 * c * f  # layer{i+1}_rn
        levels.append(level)
    unit = 2 * 27 * f * f  # one residual unit per voxel
    path = levels[3]
    for i in (3, 2, 1, 0):  # refinenet4 .. refinenet1
        if i < 3:
            macs += voxels(levels[i]) * unit  # resConfUnit1 on the skip (same shape as the path)
        macs += voxels(path) * unit  # resConfUnit2
        path = _scaled(path, head.fusion_scale[i])
        macs += voxels(path) * f * f  # out_conv after the upsampling
        if i == 3:
            path = (min(path[0], levels[2][0]), min(path[1], levels[2][1]), path[2])
    macs += voxels(path) * 27 * f * hidden  # head1
    macs += config.num_frames * head.size**2 * (27 * hidden * hidden + hidden * head.channels)  # head2
    return 2.0 * macs
