"""LLaVA-OneVision: SigLIP on square frames, a 2-layer MLP projector, a Qwen2 LLM.

A video is F frames at the tower's image size; each frame's projected tokens are 2x2-pooled
(bilinear, as the model's `apply_pooling`), then one `image_newline` token ends the video: F slots of
ceil(h/2) x ceil(w/2) tokens + 1 extra. An image (single-image samples, "anyres" off) is its full
h x w token grid + 1 newline, the model's own unpatched image path. All videos of a batch go through
the tower in ONE call (their frames concatenated), all images in one more: ranks under ZeRO-3 then
run the same calls whatever their mix of samples. TPE before the projector: on each frame's selected
tower features (SigLIP width), before `multi_modal_projector`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from student.tpe import add_timestamp_encoding

from .base import (
    TokenGrid, VisualInput, VLMAdapter, full_tensor, read_normalization, slot_times, to_normalized_float,
)

# SigLIP statistics: LLaVA-OneVision's preprocessor default.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class LlavaOneVisionAdapter(VLMAdapter):
    name = "llava_onevision"
    model_class = LlavaOnevisionForConditionalGeneration

    def __init__(self, hf_config, model_dir=None, video_size=(224, 224)):
        vc = hf_config.vision_config
        # The tower takes square frames of its own size; model.video_size does not apply.
        super().__init__(hf_config, model_dir, (vc.image_size, vc.image_size))
        self.side = vc.image_size // vc.patch_size
        self.pooled = math.ceil(self.side / 2)
        self.mean, self.std = read_normalization(model_dir, SIGLIP_MEAN, SIGLIP_STD)

    def prepare_video(self, frames, timestamps):
        pixels = to_normalized_float(frames, self.video_size, self.mean, self.std)
        grid = TokenGrid(len(pixels), self.pooled, self.pooled, 1, extra=1)
        return VisualInput(pixels, grid, slot_times(timestamps, 1), {})

    def prepare_image(self, image):
        pixels = to_normalized_float(np.asarray(image)[None], self.video_size, self.mean, self.std)
        return VisualInput(pixels, TokenGrid(1, self.side, self.side, 1, extra=1), torch.zeros(1), {})

    def _tower(self, model, pixels: torch.Tensor, times: torch.Tensor | None, tpe) -> torch.Tensor:
        """[N, 3, S, S] -> projected tokens [N, side * side, hidden], as the model's feature path; with
        `tpe`, frame i's selected features get the encoding of times[i] before the projector."""
        cfg = self.hf_config
        out = model.model.vision_tower(pixels.to(model.dtype), output_hidden_states=True, return_dict=True)
        layer = cfg.vision_feature_layer
        if isinstance(layer, int):
            feats = out.hidden_states[layer]
        else:
            feats = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        if tpe is not None:
            feats = add_timestamp_encoding(feats, times, tpe.base, tpe.scale)
        return model.model.multi_modal_projector(feats)

    def _encode(self, model, inputs, kind, tpe):
        times = torch.cat([i.slot_times for i in inputs])  # one slot per frame
        tokens = self._tower(model, torch.cat([i.pixels for i in inputs]), times, tpe)
        newline = full_tensor(model.model.image_newline)[None].to(tokens.dtype)
        if kind == "video":
            tokens = model.model.apply_pooling(tokens)
        out, start = [], 0
        for inp in inputs:
            n = inp.grid.slots
            out.append(torch.cat([tokens[start:start + n].flatten(0, 1), newline]))
            start += n
        return out

    def vision_parameters(self, model):
        # image_newline is read outside its module's forward (full_tensor): it stays frozen with the
        # tower, so ZeRO-3 and single-process training treat it alike.
        return [*model.model.vision_tower.parameters(), model.model.image_newline]

    def projector_parameters(self, model):
        return list(model.model.multi_modal_projector.parameters())

    def mm_encoder_outputs(self, images, videos):
        out = {}
        if images:
            out["image"] = BaseModelOutputWithPooling(pooler_output=tuple(images))
        if videos:
            # The model flattens (batch, tokens) itself: one row holding every video's tokens in order.
            out["video"] = BaseModelOutputWithPooling(pooler_output=torch.cat(videos)[None])
        return out
