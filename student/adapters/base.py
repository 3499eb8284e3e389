"""What the student needs to know about a LLaVA-shaped VLM, behind one small interface.

A VLM is vision encoder -> projector -> LLM. The student must (1) build the pixel inputs itself
(transformers' video processors import torchvision, which cannot be installed here), (2) compute the
projected visual tokens itself so that TPE can be added per frame: on the vision encoder's output
before the projector (the method's placement, the default) or on the projected tokens, (3) know where
the visual tokens sit in the sequence and how they tile (time, rows, cols) so that D_4DP can read the
LLM's hidden states back as a grid. Everything else is the stock transformers model, driven with
`mm_encoder_outputs` (precomputed visual features: accepted by forward and generate alike).

ZeRO-3 needs every rank to run the same modules in the same order each step, so an adapter encodes
ALL images of a batch in one vision-tower call and ALL videos in one more (see docs/stack.md).
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from student.config import TPEConfig
from student.tpe import add_timestamp_encoding, timestamp_encoding


@dataclass(frozen=True)
class TokenGrid:
    """How one video's (or image's) visual tokens tile: `slots` temporal slots of rows x cols tokens,
    `frames_per_slot` frames each, then `extra` placeholder tokens that are not on the grid."""

    slots: int
    rows: int
    cols: int
    frames_per_slot: int
    extra: int = 0

    @property
    def grid_tokens(self) -> int:
        return self.slots * self.rows * self.cols

    @property
    def num_tokens(self) -> int:
        return self.grid_tokens + self.extra


@dataclass
class VisualInput:
    """One sample's video or image, prepared for the vision tower."""

    pixels: torch.Tensor  # the adapter's layout
    grid: TokenGrid
    slot_times: torch.Tensor  # [slots] seconds (mean time of each slot's frames); zeros for images
    meta: dict  # adapter-specific (Qwen: grid_thw, seconds per temporal grid step)


def read_normalization(model_dir: str | Path | None, default_mean, default_std) -> tuple[list, list]:
    """The model's own pixel mean / std from its preprocessor_config.json, else the family default."""
    if model_dir:
        path = Path(model_dir) / "preprocessor_config.json"
        if path.exists():
            cfg = json.loads(path.read_text())
            return list(cfg.get("image_mean", default_mean)), list(cfg.get("image_std", default_std))
    return list(default_mean), list(default_std)


def to_normalized_float(frames: np.ndarray | torch.Tensor, size: tuple[int, int], mean, std) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, h, w] resized (antialiased bilinear) and normalized."""
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {tuple(x.shape)} {x.dtype}")
    x = x.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class VLMAdapter(ABC):
    """One VLM family. Holds no weights: methods take the HF model they act on."""

    name: str
    model_class: type  # the transformers *ForConditionalGeneration class

    def __init__(self, hf_config, model_dir: str | Path | None = None, video_size: tuple[int, int] = (224, 224)):
        self.hf_config = hf_config
        self.model_dir = model_dir
        self.video_size = tuple(video_size)

    @property
    def hidden_size(self) -> int:
        return self.hf_config.text_config.hidden_size

    @property
    def video_token_id(self) -> int:
        return self.hf_config.video_token_id

    @property
    def image_token_id(self) -> int:
        return self.hf_config.image_token_id

    # -- inputs ---------------------------------------------------------------------------------
    @abstractmethod
    def prepare_video(self, frames: np.ndarray, timestamps: np.ndarray) -> VisualInput: ...

    @abstractmethod
    def prepare_image(self, image: np.ndarray) -> VisualInput: ...

    def placeholder_ids(self, kind: str, grid: TokenGrid) -> list[int]:
        """Token ids that stand for one video / image in the prompt (the features replace them)."""
        token = self.video_token_id if kind == "video" else self.image_token_id
        return [token] * grid.num_tokens

    def dummy_video(self) -> VisualInput:
        """The smallest video the tower accepts: encoded on a rank whose batch has none (ZeRO-3)."""
        return self.prepare_video(np.zeros((2, *self.video_size, 3), np.uint8), np.array([0.0, 1.0]))

    def dummy_image(self) -> VisualInput:
        return self.prepare_image(np.zeros((*self.video_size, 3), np.uint8))

    # -- features -------------------------------------------------------------------------------
    def encode(self, model, inputs: list[VisualInput], kind: str, tpe: TPEConfig | None = None) -> list[torch.Tensor]:
        """Projected visual tokens of each input, [num_tokens, hidden], in ONE vision-tower call; a
        video's tokens carry TPE (if `tpe` is on) where `tpe.placement` puts it. Images have no time."""
        stamped = tpe is not None and tpe.enabled and kind == "video"
        before = tpe if stamped and tpe.placement == "before_projector" else None
        features = self._encode(model, inputs, kind, before)
        if stamped and before is None:
            features = [self._stamp_projected(f, inp, tpe) for f, inp in zip(features, inputs)]
        return features

    @abstractmethod
    def _encode(self, model, inputs: list[VisualInput], kind: str, tpe: TPEConfig | None) -> list[torch.Tensor]:
        """encode's one vision-tower call; `tpe`: add it to the vision encoder's output of each frame
        before the projector (None: no TPE there)."""

    def _stamp_projected(self, features: torch.Tensor, inp: VisualInput, tpe: TPEConfig) -> torch.Tensor:
        """TPE after the projector, on the grid tokens of one video; the extra (non-grid) tokens are left alone."""
        g = inp.grid
        grid = features[: g.grid_tokens].reshape(g.slots, g.rows * g.cols, -1)
        grid = add_timestamp_encoding(grid, inp.slot_times, tpe.base, tpe.scale)
        return torch.cat([grid.reshape(g.grid_tokens, -1), features[g.grid_tokens:]], dim=0)

    @abstractmethod
    def mm_encoder_outputs(self, images: list[torch.Tensor], videos: list[torch.Tensor]) -> dict: ...

    @abstractmethod
    def vision_parameters(self, model) -> list[torch.nn.Parameter]:
        """The vision encoder's parameters, the projector's excluded (frozen as released: model.freeze_vision)."""

    @abstractmethod
    def projector_parameters(self, model) -> list[torch.nn.Parameter]:
        """The multimodal projector's parameters (frozen as released: model.freeze_projector)."""

    def forward_kwargs(self, input_ids: torch.Tensor, images: list[VisualInput], videos: list[VisualInput]) -> dict:
        """Extra model kwargs the precomputed features need (Qwen: rope grids and timing)."""
        return {}


def full_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    """A parameter read outside its module's forward: under ZeRO-3 it is partitioned (empty) there,
    so it is gathered for the read. Only frozen parameters are read this way (no gradient returns)."""
    if not hasattr(param, "ds_id"):
        return param
    import deepspeed

    with deepspeed.zero.GatheredParameters([param]):
        return param.detach().clone()


def stamp_runs(features: torch.Tensor, times: torch.Tensor, rows: torch.Tensor, tpe: TPEConfig) -> torch.Tensor:
    """features [sum(rows), D], run i of rows[i] consecutive rows showing time times[i] seconds ->
    features + tpe.scale x the encoding of each row's time."""
    pe = timestamp_encoding(times, features.shape[-1], tpe.base).to(features.device, features.dtype)
    return features + tpe.scale * pe.repeat_interleave(rows.to(features.device), dim=0)


def slot_times(timestamps: np.ndarray, frames_per_slot: int) -> torch.Tensor:
    """Mean timestamp of each group of `frames_per_slot` consecutive frames."""
    t = torch.as_tensor(np.asarray(timestamps, dtype=np.float64))
    if t.numel() % frames_per_slot:
        raise ValueError(f"{t.numel()} timestamps do not group into slots of {frames_per_slot}")
    return t.reshape(-1, frames_per_slot).mean(dim=1)
