"""VLM families the student wraps; `build_adapter` picks one by ModelConfig.adapter."""
from __future__ import annotations

from .base import TokenGrid, VisualInput, VLMAdapter
from .llava_onevision import LlavaOneVisionAdapter
from .qwen2_5_vl import Qwen25VLAdapter

ADAPTER_CLASSES: dict[str, type[VLMAdapter]] = {
    Qwen25VLAdapter.name: Qwen25VLAdapter,
    LlavaOneVisionAdapter.name: LlavaOneVisionAdapter,
}


def build_adapter(name: str, hf_config, model_dir=None, video_size=(224, 224)) -> VLMAdapter:
    if name not in ADAPTER_CLASSES:
        raise ValueError(f"unknown VLM adapter {name!r}; known: {sorted(ADAPTER_CLASSES)}")
    return ADAPTER_CLASSES[name](hf_config, model_dir, video_size)


__all__ = ["ADAPTER_CLASSES", "TokenGrid", "VisualInput", "VLMAdapter", "build_adapter"]
