"""L4P's video encoder: a VideoMAEv2 ViT-g/14 over 16-frame windows. Submodule names follow the
released checkpoint's keys under `l4p_model.video_encoder.` (tests/data/l4p_state_dict.tsv) so that
the released weights load strictly.

Feature index i: 0 = patch embedding + positional embedding, i in 1..depth-1 = output of block i,
depth = final LayerNorm of block depth's output.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.teachers.l4p.config import L4PConfig


def sinusoid_table(num_positions: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[num_positions, dim] VideoMAE table: angle p / 10000^(2*(j//2)/dim), sin on even j, cos on odd j."""
    # float64 so the table does not depend on where the float32 rounding of large angles happens.
    position = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]
    channel = torch.arange(dim, device=device)
    angle = position / torch.pow(10000.0, (2 * (channel // 2)).double() / dim)
    table = torch.where(channel % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        # VideoMAE keeps the qkv Linear bias-free and learns q and v biases apart; k has no bias
        # because a constant added to every key shifts all scores of a query equally (softmax-invariant).
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: L4PConfig):
        super().__init__()
        kernel = (config.tubelet, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(3, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)  # [B, C, t, h, w] -> [B, t*h*w, C]


class VideoEncoder(nn.Module):
    def __init__(self, config: L4PConfig):
        super().__init__()
        if config.img_size % config.patch_size or config.num_frames % config.tubelet:
            raise ValueError(
                f"img_size {config.img_size} / num_frames {config.num_frames} are not multiples of "
                f"patch_size {config.patch_size} / tubelet {config.tubelet}"
            )
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.num_heads, config.mlp_hidden, config.norm_eps)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        # Fixed, so not in the checkpoint: non-persistent.
        self.register_buffer("pos_embed", sinusoid_table(config.num_tokens, config.embed_dim), persistent=False)
        self.register_load_state_dict_post_hook(_rebuild_pos_embed)

    def forward(self, video: torch.Tensor, levels: Sequence[int]) -> dict[int, torch.Tensor]:
        """video [B, 3, num_frames, img_size, img_size] (ImageNet-normalized) -> {level: [B, N, C]}."""
        wanted = self._check_levels(levels)
        self._check_video(video)
        x = self.patch_embed(video) + self.pos_embed.to(video.dtype)
        out = {0: x} if 0 in wanted else {}
        last = max(wanted)
        for i, block in enumerate(self.blocks[:last], start=1):
            x = block(x)
            if i == self.config.depth:
                x = self.norm(x)
            if i in wanted:
                out[i] = x
        return out

    def _check_levels(self, levels: Sequence[int]) -> set[int]:
        wanted = set(levels)
        if not wanted:
            raise ValueError("levels is empty: ask for at least one feature level")
        depth = self.config.depth
        bad = [lv for lv in levels if isinstance(lv, bool) or not isinstance(lv, int) or not 0 <= lv <= depth]
        if bad:
            raise ValueError(f"levels {bad} are not integers in [0, {depth}]")
        return wanted

    def _check_video(self, video: torch.Tensor) -> None:
        c = self.config
        expected = (3, c.num_frames, c.img_size, c.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video must be [B, {', '.join(map(str, expected))}] (B, RGB, frames, height, width), "
                f"got {list(video.shape)}; resize to {c.img_size} x {c.img_size} and cut "
                f"{c.num_frames}-frame windows first"
            )


def _rebuild_pos_embed(module: VideoEncoder, _incompatible_keys) -> None:
    # The table is not in the checkpoint, so a model built on the meta device (or materialized with
    # to_empty) and then loaded would keep an empty or garbage table: recompute it next to the weights.
    weight = module.patch_embed.proj.weight
    module.pos_embed = sinusoid_table(module.config.num_tokens, module.config.embed_dim, weight.device)


def encoder_flops(config: L4PConfig, levels: Sequence[int] | None = None) -> float:
    """FLOPs (2 x multiply-adds) of one window, batch 1, up to max(levels) or through all blocks.

    Counts the matrix products only (patch embedding, qkv, attention scores and weighted sum, proj,
    MLP); norms, GELU, softmax and residual adds are a fraction of a percent.
    """
    blocks = config.depth if levels is None else max(levels)
    if not 0 <= blocks <= config.depth:
        raise ValueError(f"levels must lie in [0, {config.depth}], got max {blocks}")
    n, d, h = config.num_tokens, config.embed_dim, config.mlp_hidden
    patch_embed = n * d * 3 * config.tubelet * config.patch_size**2
    per_block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * h
    return 2.0 * (patch_embed + blocks * per_block)
