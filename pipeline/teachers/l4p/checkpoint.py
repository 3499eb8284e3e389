"""Loading L4P weights into any nn.Module: the video encoder alone (prefix "l4p_model.video_encoder.")
or the whole model. The released checkpoint's layout (tests/data/l4p_state_dict.tsv lists every key and
shape): a PyTorch Lightning checkpoint with the weights under "state_dict", 916 keys, the 796 of the
encoder and the four dense heads plus the 120 of the track_2d head."""
from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# The sparse 2D-track head (SAM-style decoder on layer 40): 4D-RGPT does not distill it, so no
# module here has its weights and a strict load would otherwise reject them.
IGNORED_PREFIXES = ("l4p_model.task_heads.track_2d.",)

# The DPT registers its four 3x3 convs to the fusion width both as scratch.layer{1-4}_rn and in a
# list scratch.layer_rn.{0-3}, so the checkpoint may hold either spelling or both; layer{i+1}_rn is
# the canonical one.
_LAYER_RN_ALIAS = re.compile(r"^(|.*\.)scratch\.layer_rn\.(\d+)\.(.+)$")

_SHOWN = 5  # keys listed per kind in a mismatch error


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a Lightning checkpoint (under "state_dict"), a bare state dict, or a .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read safetensors checkpoint {path}: {e}") from e
    try:
        # weights_only: unpickling an arbitrary checkpoint would run whatever code it names.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Torch's message suggests weights_only=False; keep only its reason, this loader never does that.
        reason = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler" in line), str(e))
        raise ValueError(
            f"refusing checkpoint {path}: it cannot be loaded with weights_only=True (objects other than "
            f"tensors and plain containers, or a corrupt file): {reason}"
        ) from e
    except Exception as e:  # torch.load raises KeyError, RuntimeError, EOFError... on non-checkpoints
        raise ValueError(
            f"cannot read checkpoint {path} (not a PyTorch checkpoint?): {type(e).__name__}: {e}"
        ) from e
    state_dict = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"checkpoint {path} is not a state dict (or a Lightning checkpoint with one under 'state_dict'): "
            f"entries {bad[:_SHOWN]!r} are not name -> tensor"
        )
    return dict(state_dict)


def normalize_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map scratch.layer_rn.{i} to scratch.layer{i+1}_rn (equal twins merged) and drop the track_2d head."""
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # canonical key -> key as spelled in the checkpoint
    for key, value in state_dict.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        match = _LAYER_RN_ALIAS.match(key)
        canonical = f"{match[1]}scratch.layer{int(match[2]) + 1}_rn.{match[3]}" if match else key
        if canonical in out:
            other = out[canonical]
            if other.shape != value.shape or other.dtype != value.dtype or not torch.equal(other, value):
                raise ValueError(
                    f"checkpoint keys {source[canonical]!r} and {key!r} name the same DPT module but hold "
                    f"different tensors"
                )
            continue
        out[canonical] = value
        source[canonical] = key
    return out


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Load every tensor of `module` from `state_dict` (its sub-dict under `prefix`), nothing missing,
    nothing left over, shapes equal. A module built on the meta device takes the tensors as they are."""
    weights = normalize_keys(state_dict)
    if prefix:
        weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(
                f"no checkpoint key starts with {prefix!r}; keys start like {list(state_dict)[:_SHOWN]}"
            )
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        f"{k}: checkpoint {list(weights[k].shape)} vs module {list(expected[k].shape)}"
        for k in expected
        if k in weights and weights[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint does not match {type(module).__name__} (prefix {prefix!r}):"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"  {len(items)} {label}: {items[:_SHOWN]}{more}")
        raise ValueError("\n".join(parts))
    # A module built on the meta device (skipping a 4 GB random init) has no storage to copy into:
    # it takes the checkpoint's tensors themselves.
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict(weights, strict=True, assign=on_meta)


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and bytes (sorted by name), after normalize_keys: the same weights
    give the same teacher id whether they come from a .ckpt or a .safetensors file, with either alias."""
    digest = hashlib.sha256()
    weights = normalize_keys(state_dict)
    for key in sorted(weights):
        tensor = weights[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0{tensor.nbytes}\n".encode())
        # Bytes through a uint8 view: numpy has no bfloat16.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
