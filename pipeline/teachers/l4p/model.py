"""The whole L4P teacher: video encoder + one DPT head per dense task, nested so that state_dict()
keys are exactly the checkpoint's `l4p_model.video_encoder.*` and
`l4p_model.task_heads.<task>.task_head.dpt.*` (the track_2d head is not built: 4D-RGPT does not
distill it, and checkpoint.normalize_keys drops its weights)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import TASKS, L4PConfig
from .dpt import DPTHead, apply_output_transform, dpt_flops
from .encoder import VideoEncoder, encoder_flops

HEADS_PREFIX = "l4p_model.task_heads."


# The two wrappers exist only to reproduce the checkpoint's `<task>.task_head.dpt` nesting.
class _TaskHead(nn.Module):
    def __init__(self, dpt: DPTHead):
        super().__init__()
        self.dpt = dpt


class _Task(nn.Module):
    def __init__(self, dpt: DPTHead):
        super().__init__()
        self.task_head = _TaskHead(dpt)


class _L4PCore(nn.Module):
    def __init__(self, config: L4PConfig, tasks: Sequence[str]):
        super().__init__()
        self.video_encoder = VideoEncoder(config)
        self.task_heads = nn.ModuleDict(
            {t: _Task(DPTHead(config, config.heads[t])) for t in tasks}
        )


class L4PModel(nn.Module):
    """video [B, 3, num_frames, 224, 224] (ImageNet-normalized) -> latents and transformed task maps."""

    def __init__(self, config: L4PConfig):
        super().__init__()
        missing = [t for t in TASKS if t not in config.heads]
        if missing:
            raise ValueError(f"config.heads lacks tasks {missing}")
        self.config = config
        self.l4p_model = _L4PCore(config, TASKS)

    def head(self, task: str) -> DPTHead:
        if task not in self.l4p_model.task_heads:
            raise KeyError(f"no head for task {task!r}; built: {list(self.l4p_model.task_heads)}")
        return self.l4p_model.task_heads[task].task_head.dpt

    def forward(self, video: torch.Tensor, tasks: Sequence[str] = TASKS) -> dict[str, torch.Tensor]:
        """-> {"latents": [B, hooks, N, C] (the hooked encoder features, latent distillation's target),
        task: transformed output} for each task, e.g. depth [B, 1, T, 224, 224], camray [B, 6, T, 16, 16]
        (the raw rays)."""
        heads = [self.head(t) for t in tasks]  # fail on a bad task before paying for the encoder
        features = self.l4p_model.video_encoder(video, self.config.hooks)
        taps = [features[i] for i in self.config.hooks]
        out = {"latents": torch.stack(taps, dim=1)}
        for task, head in zip(tasks, heads):
            out[task] = apply_output_transform(task, head(taps))
        return out


def heads_state_dict(model: L4PModel) -> dict[str, torch.Tensor]:
    """The task heads' weights alone, under their checkpoint names (`l4p_model.task_heads.*`)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(HEADS_PREFIX)}


def window_flops(config: L4PConfig) -> dict[str, float]:
    """FLOPs of what predict runs on one 16-frame window: the encoder up to its last hook, then each
    task's head ("encoder", then one entry per task)."""
    return {"encoder": encoder_flops(config, config.hooks),
            **{task: dpt_flops(config, config.heads[task]) for task in TASKS}}
