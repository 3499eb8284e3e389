"""Timestamp positional encoding (TPE): how much time passes between frames, made explicit.

Each sampled frame's real timestamp t (seconds, from the container) is encoded as a sinusoid with no
parameters, base 10000 (docs/distillation.md says what is and is not known of the released one):
    pe[2i] = sin(t / base^(2i / d)),  pe[2i + 1] = cos(t / base^(2i / d))
and added to all of that frame's visual tokens before they enter the LLM. Two clips with identical
frames but different timing (a slow and a fast pan) thus reach the LLM differently.
"""
from __future__ import annotations

import torch


def timestamp_encoding(times: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """[...] seconds -> [..., dim] encoding (float32). `dim` may be odd: the last sine is kept."""
    if dim < 1:
        raise ValueError(f"encoding dim must be >= 1, got {dim}")
    half = (dim + 1) // 2
    exponents = torch.arange(half, dtype=torch.float64, device=times.device) * 2 / dim
    angles = times.to(torch.float64)[..., None] / base**exponents
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., :dim]
    return pe.to(torch.float32)


def add_timestamp_encoding(
    tokens: torch.Tensor, times: torch.Tensor, base: float = 10000.0, scale: float = 1.0
) -> torch.Tensor:
    """tokens [T', n, D] (n tokens per temporal slot), times [T'] -> tokens + scale * pe(t) per slot."""
    if tokens.shape[0] != times.shape[0]:
        raise ValueError(f"{tokens.shape[0]} temporal slots but {times.shape[0]} timestamps")
    pe = timestamp_encoding(times, tokens.shape[-1], base).to(tokens.device, tokens.dtype)
    return tokens + scale * pe[:, None, :]
