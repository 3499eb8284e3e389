"""Tiny random students, written as real Hugging Face model directories.

Nothing can be downloaded here, so tests and the demo build their student from a config: a few
layers, random weights (seeded), and a byte-level tokenizer with the chat and media special tokens
of the real families. The directory is what `from_pretrained` reads for a real checkpoint (config,
safetensors weights, tokenizer, preprocessor statistics), so every code path after it is the real one.

    python -m student.tiny --adapter qwen2_5_vl --out data/tiny-qwen
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlavaOnevisionConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig

from shards.local_path import local_path
from student.adapters import ADAPTER_CLASSES

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN_MEDIA = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
LLAVA_MEDIA = ("<image>", "<video>")


def byte_tokenizer(special: tuple[str, ...]) -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every UTF-8 byte is one token, so any text round-trips."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=IM_END,
        additional_special_tokens=[IM_START, *special],
    )
    return fast


def _text_config(vocab: int, tokenizer, hidden: int, layers: int) -> dict:
    return dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_config(adapter: str, tokenizer, hidden: int = 64, layers: int = 2):
    vocab = len(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(vocab, tokenizer, hidden, layers)
    if adapter == "qwen2_5_vl":
        # mrope_section splits the rotary half-dim (head_dim / 2 = 8) over time, rows and cols.
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                      window_size=56, fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=False,
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        )
    if adapter == "llava_onevision":
        text["model_type"] = "qwen2"
        vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
        return LlavaOnevisionConfig(
            text_config=text, vision_config=vision, image_token_index=ids("<image>"),
            video_token_index=ids("<video>"), vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_grid_pinpoints=[[56, 56]],
        )
    raise ValueError(f"unknown adapter {adapter!r}; known: {sorted(ADAPTER_CLASSES)}")


def make_tiny_vlm(adapter: str, out: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny random `adapter` VLM to `out` (a from_pretrained directory); returns `out`."""
    out = Path(out)
    media = QWEN_MEDIA if adapter == "qwen2_5_vl" else LLAVA_MEDIA
    tokenizer = byte_tokenizer(media)
    config = tiny_config(adapter, tokenizer, hidden, layers)
    torch.manual_seed(seed)
    model = ADAPTER_CLASSES[adapter].model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", choices=sorted(ADAPTER_CLASSES), default="qwen2_5_vl")
    p.add_argument("--out", type=local_path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    a = p.parse_args()
    path = make_tiny_vlm(a.adapter, a.out, a.seed, a.hidden, a.layers)
    n = json.loads((path / "config.json").read_text())["model_type"]
    print(f"tiny {n} written to {path}")


if __name__ == "__main__":
    main()
