"""The storage encodings of shards/codecs.py in torch, computed where the tensors are: on the teacher's
GPU before its outputs leave it (the caching job), and back to float32 on the student's GPU in the
training step. The stored arrays are bit for bit those of codecs.encode_arrays, and the decoded values
those of codecs.decode_field (tests/test_torch_codecs.py, on adversarial values).

How the bits stay numpy's. Casts, float32 / float64 arithmetic and round-half-to-even are IEEE-exact
on every device, so an encoding is computed with numpy's dtypes in numpy's order of operations. Two
things are not exact: float64 sums over many values (numpy adds tokens one after the other and a
row's values pairwise; torch and CUDA add in other orders) and log (torch's is within an ulp or two of
numpy's). Where one of them feeds a stored value, the device's result comes with a bound on its
distance from numpy's, and the rare values whose rounding that bound cannot decide (a float32
rounding, or a code's half-step boundary, within reach) are computed again by numpy on the CPU from
the few inputs they depend on. What the device path does not cover goes to the numpy codec whole, on a
CPU copy of the field: values that fail a check (so its errors are numpy's, word for word), a cast
numpy rounds once and torch twice (float64 to float16), integer storage of float values, and
intermediate overflow.

encode_outputs (the teacher actor's call) gives a field in CPU memory to numpy itself, the reference
and, on a CPU, the faster of the two; encode_tensor is the torch path, on any device.

decode_tensor is bit for bit numpy's for every encoding whose decode is arithmetic; log-depth and
prob-u8 decode through exp in float64, which torch and numpy compute to within an ulp: their float32
results agree, a float64 ulp being 2**-29 of a float32 one, except where the float64 value lies within
an ulp or two of a float32 rounding tie, where the two may be one float32 ulp apart (which values, if
any, depends on the CPU's libm; tested over every code, for several log_min and steps).

uint16 arrays travel as int16 tensors of the same bits (torch's uint16 lacks most operations on GPUs).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from shards.codecs import (INT8_MAX, INT16_MAX, PROB_LOGIT_MAX, PROB_LOGIT_STEP, SIDE_SEPARATOR, UINT16_MAX,
                           check_names, encode_field, side_specs)
from shards.schema import FieldSpec

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
# Bounds on how far a float64 result of the device may lie from numpy's, in units of 2**-52 of the
# magnitudes involved: a sum of n values in any order errs by at most (n - 1) 2**-53 sum|x| (so two
# orders differ by twice that); log is within 1 ulp of exact in numpy (SVML / libm), in torch (SLEEF)
# and in CUDA. Each is taken 2-4 times over so that the arithmetic of the checks themselves is covered.
_EPS = 2.0**-52
_LOG_ULPS = 8
# The device's log and log1p, looked up at every call. A module attribute so that tests can put in a log
# that is an ulp or two from numpy's by construction: whether a host's torch.log and numpy's log differ
# at all depends on the CPU (on an Intel Xeon with AVX-512 both agreed on a million inputs), a GPU's does.
_device_log: Callable[[torch.Tensor], torch.Tensor] = torch.log
_device_log1p: Callable[[torch.Tensor], torch.Tensor] = torch.log1p


def encode_outputs(specs: list[FieldSpec], arrays: Mapping[str, object]) -> dict[str, np.ndarray]:
    """codecs.encode_arrays for values that may be torch tensors on any device: a field on a GPU is
    quantized there (encode_tensor) and only its stored arrays (C-contiguous numpy) leave it; a field
    in CPU memory is encoded by numpy, the reference and, on a CPU, the faster of the two. Same checks,
    same errors, same bytes."""
    check_names(specs, arrays)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        value = arrays[spec.name]
        on_cpu = not isinstance(value, torch.Tensor) or value.device.type == "cpu"
        stored = encode_field(spec, _numpy(value) if isinstance(value, torch.Tensor) else value) if on_cpu \
            else encode_tensor(spec, value)
        for name, array in stored.items():
            # A teacher's view (a transposed or fancy-indexed map) keeps its memory order through numpy's
            # arithmetic: the writers and checksums want C order.
            out[name] = array if array.flags.c_contiguous else array.copy(order="C")
    return out


def encode_tensor(spec: FieldSpec, value: torch.Tensor) -> dict[str, np.ndarray]:
    """One field's stored arrays (codecs.encode_field's, C-contiguous) computed by torch on the tensor's
    device."""
    with torch.no_grad():
        encoded = _on_device(spec, value)
    if encoded is None:  # outside the device path: numpy computes it (or raises) on a CPU copy
        return encode_field(spec, _numpy(value))
    return {name: _numpy(t, spec.dtype if name == spec.name else None) for name, t in encoded.items()}


def _numpy(tensor: torch.Tensor, dtype: str | None = None) -> np.ndarray:
    array = tensor.detach().cpu()
    if array.dtype == torch.bfloat16:  # numpy has no bfloat16: its float32 values are the same numbers
        array = array.float()
    array = array.numpy()
    return array.view(np.uint16) if dtype == "uint16" else array


def _on_device(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The stored tensors, or None where numpy must decide (an error to raise, a case not covered)."""
    if tuple(x.shape) != spec.shape or x.dtype not in _FLOATS or not x.numel() or not bool(torch.isfinite(x).all()):
        return None
    encode = {"plain": _plain, "bf16": _bf16, "int8-token": _int8_token, "log-depth": _log_depth,
              "fixed": _fixed, "prob-u8": _prob_u8}[spec.encoding]
    return encode(spec, x.contiguous())  # a view (a merged map's time slice): outputs in C order


def _plain(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    target = _TORCH_DTYPES.get(spec.dtype)
    if target is None or (x.dtype == torch.float64 and target == torch.float16):
        return None  # integer storage of floats (numpy checks and casts), or a double rounding in torch
    stored = x.to(target).contiguous()
    if not bool(torch.isfinite(stored).all()):
        return None  # too large for the storage dtype: numpy's error
    return {spec.name: stored}


def _bf16(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    if bool(((rounded & 0x7F80) == 0x7F80).any()):
        return None  # rounds to inf: numpy's error
    return {spec.name: _as_uint16_bits(rounded)}


def _as_uint16_bits(values: torch.Tensor) -> torch.Tensor:
    """Integers in [0, 65535] as the int16 tensor of the same bits (numpy views it as uint16): a cast to
    a narrower integer keeps the low bits."""
    return values.to(torch.int16)


def _int8_token(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    x = x.to(torch.float32)
    offset = _column_mean(x)
    centred = x - offset.unsqueeze(-2)
    channel = _column_rms(centred)
    channel = torch.where(channel == 0, torch.ones_like(channel), channel)  # a constant channel is its offset
    y = centred / channel.unsqueeze(-2)
    del centred
    if not bool(torch.isfinite(y).all()):
        return None  # overflow on the way (|values| near float32's max): numpy's result, whatever it is
    absmax = y.abs().amax(dim=-1)
    rms = _row_rms(y)
    token = torch.maximum(absmax / INT8_MAX, torch.tensor(np.float32(spec.step), device=x.device) * rms)
    token = torch.where(token == 0, torch.ones_like(token), token)  # an all-zero token stores zeros
    codes = torch.round(y / token.unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    name = spec.name + SIDE_SEPARATOR
    return {spec.name: codes, name + "offset": offset, name + "channel_scale": channel, name + "token_scale": token}


def _column_mean(x: torch.Tensor) -> torch.Tensor:
    """numpy's x.mean(axis=-2, dtype=np.float64).astype(np.float32) of float32 x [..., N, C]."""
    return _float32_mean(x, -2, _token_means)


def _column_rms(x: torch.Tensor) -> torch.Tensor:
    """numpy's np.sqrt(np.square(x).mean(axis=-2, dtype=np.float64)).astype(np.float32)."""
    return _float32_mean(x.square(), -2, _token_means, torch.sqrt)


def _row_rms(x: torch.Tensor) -> torch.Tensor:
    """numpy's np.sqrt(np.square(x).mean(axis=-1, dtype=np.float64)).astype(np.float32)."""
    return _float32_mean(x.square(), -1, _row_means, torch.sqrt)


def _token_means(columns: np.ndarray) -> np.ndarray:
    """numpy's float64 mean over axis -2 of a [..., N, C] float32 array, for [k, N] columns: it adds
    the N values one after the other (tests/test_torch_codecs.py checks that it does)."""
    return np.add.accumulate(columns.astype(np.float64), axis=-1)[:, -1] / columns.shape[-1]


def _row_means(rows: np.ndarray) -> np.ndarray:
    """numpy's float64 mean over axis -1 of float32 rows: numpy itself, row by row as in the whole array."""
    return rows.mean(axis=-1, dtype=np.float64)


def _float32_mean(values: torch.Tensor, dim: int, numpy_means: Callable[[np.ndarray], np.ndarray],
                  then: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """float32(then(mean)) of float32 `values` over `dim`, the mean in float64 as numpy computes it
    (np.mean(dtype=np.float64)), whatever order the device adds in.

    The device's sum S lies within B = 2 (n - 1) 2**-53 sum|x| of numpy's; where float32(then(S / n))
    is the same at both ends of S +- B (rounding and sqrt are monotonic) numpy's result is that value,
    elsewhere numpy computes it from the values of that mean (`numpy_means` of them, [k, n] -> [k])."""
    n = values.shape[dim]
    wide = values.to(torch.float64)
    total = wide.sum(dim=dim)
    bound = 4 * n * 2.0**-53 * wide.abs().sum(dim=dim) + 4 * _EPS * total.abs()
    del wide
    then = then or (lambda t: t)
    low, high = then((total - bound) / n).to(torch.float32), then((total + bound) / n).to(torch.float32)
    mean = then(total / n).to(torch.float32)
    undecided = low != high
    if bool(undecided.any()):
        where = undecided.nonzero(as_tuple=True)
        moved = values.movedim(dim, -1)[where]  # [k, n]: the values of each undecided mean
        exact = then(torch.from_numpy(numpy_means(_numpy(moved)))).to(torch.float32)
        mean[where] = exact.to(mean.device)
    return mean


def _log_depth(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    depth = x.to(torch.float64)
    if bool((depth < 0).any()):
        return None  # numpy's error
    valid = depth > 0
    log_min = torch.zeros((), dtype=torch.float64, device=x.device)
    codes = torch.zeros(depth.shape, dtype=torch.int64, device=x.device)
    if bool(valid.any()):
        # numpy's min of its logs, from the depths whose log could be the smallest (log is monotonic;
        # depths apart by a factor of 1 + 2**-36 have logs far more than a few ulps apart).
        smallest = depth[valid].min()
        near = depth[valid & (depth <= smallest * (1 + 2.0**-36))]
        log_min = torch.tensor(np.log(_numpy(near)).min(), dtype=torch.float64, device=x.device)
        steps, margin = _log_steps(torch.where(valid, depth, torch.ones_like(depth)), log_min, spec.step)
        rounded = _rint_as_numpy(steps, margin, valid, lambda d: (np.log(d) - log_min.item()) / spec.step, depth)
        if bool((rounded[valid] + 1 > UINT16_MAX).any()):
            return None  # too wide a depth range for the step: numpy's error
        codes = torch.where(valid, rounded + 1, torch.zeros_like(rounded)).to(torch.int64)
    return {spec.name: _as_uint16_bits(codes), spec.name + SIDE_SEPARATOR + "log_min": log_min}


def _log_steps(depth: torch.Tensor, log_min: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log(depth) - log_min) / step as the device computes it, and a bound on its distance from
    numpy's (np.log within an ulp of the exact log, torch's too; the subtraction and the division
    round alike from inputs that close)."""
    logs = _device_log(depth)
    steps = (logs - log_min) / step
    return steps, _LOG_ULPS * _EPS * ((logs.abs() + log_min.abs()) / step + steps.abs())


def _logit_steps(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """prob-u8's (clip(logit(p)) + PROB_LOGIT_MAX) / PROB_LOGIT_STEP for 0 < p < 1 as the device
    computes it, and a bound on its distance from numpy's: log p and log1p(-p) each within an ulp,
    both at most |logit| + log 2 in size."""
    logit = _device_log(p) - _device_log1p(-p)
    steps = (logit.clamp(-PROB_LOGIT_MAX, PROB_LOGIT_MAX) + PROB_LOGIT_MAX) / PROB_LOGIT_STEP
    return steps, _LOG_ULPS * _EPS * ((logit.abs() + PROB_LOGIT_MAX) / PROB_LOGIT_STEP + steps.abs())


def _rint_as_numpy(steps: torch.Tensor, margin: torch.Tensor, where: torch.Tensor,
                   numpy_steps: Callable[[np.ndarray], np.ndarray], inputs: torch.Tensor) -> torch.Tensor:
    """round-half-even of numpy's `numpy_steps(inputs)`, given the device's `steps` within `margin` of
    them: where a half-step boundary lies within the margin, numpy computes the value (int64)."""
    rounded = torch.round(steps)
    undecided = where & ((steps - torch.floor(steps) - 0.5).abs() <= margin)
    if bool(undecided.any()):
        exact = np.rint(numpy_steps(_numpy(inputs[undecided])))
        rounded[undecided] = torch.from_numpy(exact).to(rounded.device)
    return rounded.to(torch.int64)


def _fixed(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    codes = torch.round(x.to(torch.float64) / spec.step)
    if codes.numel() and bool((codes.abs().amax() > INT16_MAX)):
        return None  # beyond int16 at this step: numpy's error
    return {spec.name: codes.to(torch.int16)}


def _prob_u8(spec: FieldSpec, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    p = x.to(torch.float64)
    if p.numel() and bool(((p < 0) | (p > 1)).any()):
        return None  # not a probability: numpy's error
    inner = (p > 0) & (p < 1)
    steps, margin = _logit_steps(torch.where(inner, p, torch.full_like(p, 0.5)))

    def numpy_steps(q: np.ndarray) -> np.ndarray:
        return (np.clip(np.log(q) - np.log1p(-q), -PROB_LOGIT_MAX, PROB_LOGIT_MAX) + PROB_LOGIT_MAX) / PROB_LOGIT_STEP

    codes = _rint_as_numpy(steps, margin, inner, numpy_steps, p) + 1
    codes = torch.where(p == 0, 0, torch.where(p == 1, 255, codes))
    return {spec.name: codes.to(torch.uint8)}


def decode_tensor(spec: FieldSpec, stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A field's values as float32 on its tensors' device, from its stored tensors (main array and side
    arrays by name, uint16 ones as int16 bits; any leading batch dimensions): codecs.decode_field's
    values, as float32."""
    codes = stored[spec.name]
    if spec.encoding == "plain":
        return codes.to(torch.float32)
    if spec.encoding == "bf16":
        return (_uint16_values(codes) << 16).to(torch.int32).view(torch.float32)  # the low 32 bits
    if spec.encoding == "fixed":
        return (codes.to(torch.float64) * spec.step).to(torch.float32)
    if spec.encoding == "prob-u8":
        logit = (codes.to(torch.float64) - 1) * PROB_LOGIT_STEP - PROB_LOGIT_MAX
        p = 1 / (1 + torch.exp(-logit))
        return torch.where(codes == 0, 0.0, torch.where(codes == 255, 1.0, p)).to(torch.float32)
    side = {s.name[len(spec.name) + len(SIDE_SEPARATOR):]: stored[s.name] for s in side_specs(spec)}
    if spec.encoding == "int8-token":
        values = codes.to(torch.float32)
        values *= side["token_scale"].unsqueeze(-1)
        values *= side["channel_scale"].unsqueeze(-2)
        values += side["offset"].unsqueeze(-2)
        return values
    levels = _uint16_values(codes)
    log_min = side["log_min"].reshape(*side["log_min"].shape, *(1,) * len(spec.shape))
    logs = log_min + (levels.to(torch.float64) - 1) * spec.step
    return torch.where(levels > 0, torch.exp(logs), 0.0).to(torch.float32)


def _uint16_values(codes: torch.Tensor) -> torch.Tensor:
    """int64 values of uint16 codes, held as their int16 bits (or as wider integers)."""
    return codes.to(torch.int64) & UINT16_MAX
