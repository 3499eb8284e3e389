"""Qwen2.5-VL: a ViT on 14-px patches of frame PAIRS (temporal patch 2), 2x2 patch merger -> LLM.

Pixel layout is the Qwen2-VL processor's: per video [grid_t * grid_h * grid_w, 3 * 2 * 14 * 14], the
patches of each 2x2 merge window adjacent, so the merged tokens come out (t, row, col) row-major.
The LLM uses 3-D rotary positions (time, row, col); its time axis needs `second_per_grid_ts` (seconds
per temporal slot) and `mm_token_type_ids`, or it silently treats every video as 1 s per slot with 1-D
positions (docs/stack.md). Those are computed here from the real timestamps.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .base import TokenGrid, VisualInput, VLMAdapter, read_normalization, slot_times, stamp_runs, to_normalized_float

# OpenAI CLIP statistics: Qwen2.5-VL's preprocessor default.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Qwen25VLAdapter(VLMAdapter):
    name = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration

    def __init__(self, hf_config, model_dir=None, video_size=(224, 224)):
        super().__init__(hf_config, model_dir, video_size)
        vc = hf_config.vision_config
        self.patch, self.merge, self.temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        side = self.patch * self.merge
        if self.video_size[0] % side or self.video_size[1] % side:
            raise ValueError(f"model.video_size {self.video_size} must be a multiple of {side} (patch x merge)")
        self.mean, self.std = read_normalization(model_dir, CLIP_MEAN, CLIP_STD)

    def _patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[T, 3, H, W] (T a multiple of the temporal patch) -> [patches, 3 * tp * p * p], grid thw."""
        t, c, h, w = x.shape
        tp, p, m = self.temporal, self.patch, self.merge
        gt, gh, gw = t // tp, h // p, w // p
        x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)

    def _prepare(self, frames: np.ndarray, timestamps: np.ndarray) -> VisualInput:
        x = to_normalized_float(frames, self.video_size, self.mean, self.std)
        times = np.asarray(timestamps, dtype=np.float64)
        if len(x) % self.temporal:  # the processor's rule: pad with the last frame
            pad = self.temporal - len(x) % self.temporal
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
            times = np.concatenate([times, np.repeat(times[-1:], pad)])
        pixels, (gt, gh, gw) = self._patchify(x)
        grid = TokenGrid(gt, gh // self.merge, gw // self.merge, self.temporal)
        span = float(times[-1] - times[0])
        # Seconds per temporal slot for the rotary time axis: the clip's mean frame interval x 2.
        seconds_per_slot = span / (len(times) - 1) * self.temporal if len(times) > 1 and span > 0 else 1.0
        meta = {"grid_thw": (gt, gh, gw), "seconds_per_slot": seconds_per_slot}
        return VisualInput(pixels, grid, slot_times(times, self.temporal), meta)

    def prepare_video(self, frames, timestamps):
        return self._prepare(frames, timestamps)

    def prepare_image(self, image):
        # An image is a one-slot video of the same picture twice (the processor's tiling).
        return self._prepare(np.repeat(np.asarray(image)[None], self.temporal, axis=0), np.zeros(self.temporal))

    def placeholder_ids(self, kind, grid):
        return [self.hf_config.vision_start_token_id, *super().placeholder_ids(kind, grid),
                self.hf_config.vision_end_token_id]

    def _encode(self, model, inputs, kind, tpe):
        pixels = torch.cat([i.pixels for i in inputs]).to(model.dtype)
        thw = torch.tensor([i.meta["grid_thw"] for i in inputs], dtype=torch.long)
        get = model.model.get_video_features if kind == "video" else model.model.get_image_features
        if tpe is None:
            return list(get(pixels, thw, return_dict=True).pooler_output)
        # The merger is the projector: TPE goes on its input, the vision blocks' output (one row per
        # 14-px patch of a frame pair). Those rows are window-reordered, but only within each temporal
        # slot of each input (transformers' get_vision_window_index orders windows slot by slot), so
        # the rows of slot s are still the s-th run of grid_h x grid_w rows: one time per run.
        times = torch.cat([i.slot_times for i in inputs])
        rows = torch.cat([torch.full((gt,), gh * gw) for gt, gh, gw in (i.meta["grid_thw"] for i in inputs)])
        hook = model.model.visual.merger.register_forward_pre_hook(
            lambda module, args: (stamp_runs(args[0], times, rows, tpe),))
        try:
            return list(get(pixels, thw, return_dict=True).pooler_output)
        finally:
            hook.remove()

    def mm_encoder_outputs(self, images, videos):
        out = {}
        if images:
            out["image"] = BaseModelOutputWithPooling(pooler_output=tuple(images))
        if videos:
            out["video"] = BaseModelOutputWithPooling(pooler_output=tuple(videos))
        return out

    def vision_parameters(self, model):
        return [p for n, p in model.model.visual.named_parameters() if not n.startswith("merger.")]

    def projector_parameters(self, model):
        # visual.merger is Qwen's projector: 2 x 2 merge + MLP into the LLM width.
        return list(model.model.visual.merger.parameters())

    def forward_kwargs(self, input_ids, images, videos):
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == self.image_token_id] = 1
        types[input_ids == self.video_token_id] = 2
        kwargs = {"mm_token_type_ids": types}
        if images:
            kwargs["image_grid_thw"] = torch.tensor([i.meta["grid_thw"] for i in images], dtype=torch.long)
        if videos:
            kwargs["video_grid_thw"] = torch.tensor([v.meta["grid_thw"] for v in videos], dtype=torch.long)
            kwargs["second_per_grid_ts"] = torch.tensor([v.meta["seconds_per_slot"] for v in videos])
        return kwargs
