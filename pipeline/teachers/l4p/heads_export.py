"""The frozen L4P DPT heads alone, for a student's explicit distillation: it pushes its own predicted
latents (4 token tensors [B, N, C]) through the teacher's heads, so it needs the heads (85.8 M
parameters each, camray 82.3 M) but never the 1 B-param encoder.

directory/l4p_heads.safetensors  the heads' weights under their checkpoint names
                                 (l4p_model.task_heads.<task>.task_head.dpt.*)
directory/l4p_heads.json         {"config": L4PConfig fields, "tasks": [...], "weights_sha256": ...}
directory/l4p_head_<field>.pt2   each head as a torch.export program giving the head's raw output
                                 (log depth, flow, the motion logit, the raw rays: the student's
                                 prediction space): what student/ loads, since it may not import this
                                 package (the heads reach it as data)
directory/l4p_head_programs.json {field: weights_sha256}: the weights each program was made from

The caching job writes all of it (the teacher's `export`); the programs can be remade by hand:
    python -m pipeline.teachers.l4p.heads_export CACHE/teacher     # write the .pt2 programs
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from shards.atomic import atomic_write_bytes, commit_temporary, remove_temporary, temporary_path
from shards.local_path import local_path
from shards.teacher_fields import HEAD_PROGRAM_FILE

from .checkpoint import state_dict_sha256
from .config import L4PConfig, config_from_dict
from .dpt import DPTHead
from .model import HEADS_PREFIX, L4PModel, heads_state_dict

WEIGHTS_FILE = "l4p_heads.safetensors"
META_FILE = "l4p_heads.json"
PROGRAMS_FILE = "l4p_head_programs.json"  # the weights each program was made from
_DPT_INFIX = ".task_head.dpt."
# Cache field name of each L4P task (the cache says "flow" for L4P's flow_2d_backward).
TASK_FIELDS = {"depth": "depth", "flow_2d_backward": "flow", "dyn_mask": "dyn_mask", "camray": "camray"}


def export_heads(model: L4PModel, config: L4PConfig, directory: str | Path) -> Path:
    """Write the heads of `model` (built from `config`) to `directory`; returns the directory."""
    if model.config != config:
        raise ValueError("model was built from a different config than the one to export with it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in heads_state_dict(model).items()}
    meta = {
        "config": dataclasses.asdict(config),
        "tasks": list(model.l4p_model.task_heads),
        "weights_sha256": state_dict_sha256(weights),
    }
    text = json.dumps(meta, indent=2, sort_keys=True)
    meta_path = directory / META_FILE
    if meta_path.exists() and (directory / WEIGHTS_FILE).exists() and meta_path.read_text() == text:
        return directory  # every run's first actor exports: an identical export is not rewritten
    # Weights first and the JSON last, each by atomic rename: a directory with a JSON is a complete export.
    atomic_write_bytes(directory / WEIGHTS_FILE, save(weights), replace=True)
    atomic_write_bytes(meta_path, text.encode(), replace=True)
    return directory


def load_heads(directory: str | Path) -> tuple[L4PConfig, nn.ModuleDict]:
    """-> (config, task -> DPTHead), frozen (no grad, eval), on the CPU; the encoder is never built."""
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(f"not an L4P heads export (no {path.name}): {directory}")
    meta = json.loads(meta_path.read_text())
    config = config_from_dict(meta["config"])
    weights = load_file(str(weights_path), device="cpu")
    digest = state_dict_sha256(weights)
    if digest != meta["weights_sha256"]:
        raise ValueError(
            f"{weights_path} does not hold the weights {meta_path.name} describes "
            f"(sha256 {digest[:12]}... vs {meta['weights_sha256'][:12]}...)"
        )
    # Built on the meta device and then handed the file's tensors: no random init of ~86 M params a head.
    with torch.device("meta"):
        heads = nn.ModuleDict(
            {t: DPTHead(config, config.heads[t]) for t in meta["tasks"]}
        )
    heads.load_state_dict(_strip_prefix(weights), strict=True, assign=True)
    return config, heads.requires_grad_(False).eval()


def _strip_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """l4p_model.task_heads.<task>.task_head.dpt.<name> -> <task>.<name>"""
    out = {}
    for key, value in weights.items():
        task, sep, name = key.removeprefix(HEADS_PREFIX).partition(_DPT_INFIX)
        if not key.startswith(HEADS_PREFIX) or not sep:
            raise ValueError(f"{key!r} is not an L4P head weight ({HEADS_PREFIX}<task>{_DPT_INFIX}...)")
        out[f"{task}.{name}"] = value
    return out


class _FourTaps(nn.Module):
    """A head called with its four taps as separate arguments (what torch.export takes)."""

    def __init__(self, head: DPTHead):
        super().__init__()
        self.head = head

    def forward(self, t0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, t3: torch.Tensor) -> torch.Tensor:
        return self.head([t0, t1, t2, t3])


def export_head_programs(directory: str | Path, fields: tuple[str, ...] | None = None) -> list[Path]:
    """Write each exported head (or those of `fields`) as a torch.export program with a dynamic
    batch of windows; returns the paths.

    Taps: four [B, 2048, C] tensors (one window each) -> [B, channels, 16, S, S]. A program is graph +
    raw weights (no pickle to unpickle), loadable with torch.export.load and differentiable w.r.t. its
    inputs, so a student can push its predicted latents through the frozen heads."""
    directory = Path(directory)
    config, heads = load_heads(directory)
    # A program is derived from the weights beside it: written when they change, else kept (exporting
    # the full heads takes a while, and every job's first teacher actor exports). The record names the
    # weights each field's program was made from.
    weights_sha256 = json.loads((directory / META_FILE).read_text())["weights_sha256"]
    record_path = directory / PROGRAMS_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    batch = torch.export.Dim("windows", min=1, max=4096)
    example = tuple(torch.zeros(2, config.num_tokens, config.embed_dim) for _ in range(4))
    written = []
    for task, head in heads.items():
        field = TASK_FIELDS[task]
        final = directory / HEAD_PROGRAM_FILE.format(field=field)
        if fields is not None and field not in fields:
            continue
        if record.get(field) == weights_sha256 and final.exists():
            written.append(final)
            continue
        program = torch.export.export(
            _FourTaps(head), example, dynamic_shapes=tuple({0: batch} for _ in range(4))
        )
        temp = temporary_path(final)
        try:
            with temp.open("wb") as f:  # a file object: torch.export.save warns about a name not ending .pt2
                torch.export.save(program, f)
            if final.exists():
                final.unlink()
            written.append(commit_temporary(temp, final))
        finally:
            remove_temporary(temp)
        record[field] = weights_sha256
        atomic_write_bytes(record_path, json.dumps(record, sort_keys=True).encode(), replace=True)
    return written


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write the exported L4P heads as torch.export programs.")
    p.add_argument("directory", type=local_path, help="CACHE/teacher (holds l4p_heads.safetensors and l4p_heads.json)")
    for path in export_head_programs(p.parse_args().directory):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
