"""The torch codecs (shards/torch_codecs.py) against the numpy ones (shards/codecs.py), on the values where
two implementations part: ties at half a step, the int8 / int16 / uint16 / float16 limits, zeros and
negative zero, NaN and inf (refused alike, with numpy's words), fp16 and bf16 subnormals and rounding
ties, float64 inputs, sums whose order changes their last bits, logs at a code's half-step boundary.
Run on CPU tensors: the device path is the same code on a GPU (bench/gpu_check.py repeats the equality
there)."""
from __future__ import annotations

import re
from unittest import mock

import numpy as np
import pytest
import torch

from shards import torch_codecs
from shards.codecs import PROB_LOGIT_MAX, PROB_LOGIT_STEP, decode_field, encode_arrays, encode_field, stored_specs
from shards.schema import FieldSpec
from shards.torch_codecs import (_column_mean, _column_rms, _float32_mean, _log_steps, _logit_steps, _rint_as_numpy,
                                 _row_means, _row_rms, _token_means, decode_tensor, encode_outputs, encode_tensor)


def spec(shape, dtype, encoding="plain", step=0.0, name="x") -> FieldSpec:
    return FieldSpec(name, tuple(shape), dtype, "none", 0, encoding, step)


def as_numpy(value) -> np.ndarray:
    """What numpy sees of a value: a tensor's values (bfloat16 ones as float32: numpy has no bfloat16)."""
    if isinstance(value, torch.Tensor):
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def as_tensor(value) -> torch.Tensor:
    """The value as a tensor of numpy's dtype for it (float64 for Python floats)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(value)))


def assert_same_bits(s: FieldSpec, value, on_device: bool = True) -> dict[str, np.ndarray]:
    """The torch encoding of `value` (as a tensor) is numpy's, array for array and bit for bit, and it
    was computed by torch (on_device) or, for the cases it leaves to numpy, by numpy."""
    want = encode_field(s, as_numpy(value))
    with mock.patch.object(torch_codecs, "encode_field", wraps=encode_field) as numpy_path:
        got = encode_tensor(s, value if isinstance(value, torch.Tensor) else as_tensor(value))
    assert numpy_path.called != on_device, "computed by numpy" if on_device else "not left to numpy"
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape and got[name].flags.c_contiguous, name
        assert got[name].tobytes() == np.ascontiguousarray(array).tobytes(), name
    return want


def assert_same_error(s: FieldSpec, value) -> None:
    with pytest.raises(ValueError) as numpy_error:
        encode_field(s, as_numpy(value))
    with pytest.raises(ValueError, match=re.escape(str(numpy_error.value))):
        encode_tensor(s, value if isinstance(value, torch.Tensor) else as_tensor(value))


def float32_neighbours(values: np.ndarray) -> np.ndarray:
    """Each value, its float32 neighbours and the float64 midpoints between them (rounding ties)."""
    x = values.astype(np.float32)
    up, down = np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))
    return np.concatenate([x, up, down, (x.astype(np.float64) + up) / 2, (x.astype(np.float64) + down) / 2])


# -- fixed ------------------------------------------------------------------------------------------------
def test_fixed_ties_limits_zeros_and_refusals():
    step = 2**-5
    k = np.arange(-40, 40)
    values = np.concatenate([(k + 0.5) * step, k * step, [0.0, -0.0, 32767 * step, -32767 * step,
                                                          32767.49 * step, -32767.49 * step, 1e-300]])
    stored = assert_same_bits(spec(values.shape, "int16", "fixed", step), values)["x"]
    assert stored[:80].tolist() == (np.rint(k + 0.5)).astype(int).tolist(), "ties to even"
    assert_same_bits(spec(values.shape, "int16", "fixed", 0.1), values.astype(np.float32))  # a step not a power of 2
    # float32 values divided in float64, as numpy does: in float32 some land on the other side of a half step
    near_halves = (np.random.default_rng(0).integers(-30000, 30000, 200_000) + 0.5) * np.float32(0.1)
    assert_same_bits(spec(near_halves.shape, "int16", "fixed", 0.1), near_halves.astype(np.float32))
    assert_same_error(spec((3,), "int16", "fixed", step), [0.0, 32767.5 * step, 1.0])  # rounds to 32768
    assert_same_error(spec((2,), "int16", "fixed", step), [np.nan, 1.0])
    assert_same_error(spec((2,), "int16", "fixed", step), [np.inf, 1.0])
    assert_same_error(spec((3,), "int16", "fixed", step), [0.0, 1.0])  # shape
    grid = torch.from_numpy(np.random.default_rng(1).normal(0, 40, (8, 6)))
    assert_same_bits(spec((6, 8), "int16", "fixed", step), grid.T)  # a transposed view


# -- plain casts ------------------------------------------------------------------------------------------
def test_float16_subnormals_ties_limits_and_float64_inputs():
    tiny = 2.0**-24  # the smallest float16 subnormal
    values = np.concatenate([
        np.arange(-50, 50) * tiny / 2,  # subnormals and the ties between them
        float32_neighbours(np.array([6.1e-5, 1.0, 1.0 + 2**-11, 2048.0, 65504.0, -65504.0, 65519.0])),
        [0.0, -0.0],
    ])
    s = spec(values.shape, "float16")
    for dtype in (np.float32, np.float64, np.float16):  # float64: numpy rounds once, torch twice: numpy's
        stored = assert_same_bits(s, values.astype(dtype), on_device=dtype != np.float64)["x"]
        assert np.signbit(stored[-1]) and not np.signbit(stored[-2]), "negative zero stays negative"
    assert_same_error(spec((2,), "float16"), np.array([1.0, 65520.0], np.float32))  # rounds to inf
    assert_same_error(spec((2,), "float16"), np.array([1.0, -np.inf], np.float32))
    assert_same_bits(spec(values.shape, "float32"), values)
    assert_same_bits(spec(values.shape, "float64"), values.astype(np.float32))
    # A teacher computing in bfloat16 hands bfloat16 tensors: numpy sees their float32 values.
    bf16 = torch.from_numpy(values[np.abs(values) < 6e4].astype(np.float32)).to(torch.bfloat16)
    assert_same_bits(spec(bf16.shape, "float16"), bf16)
    assert_same_bits(spec(bf16.shape, "uint16", "bf16"), bf16)
    assert_same_error(spec((2,), "float16"), torch.tensor([1.0, float("inf")], dtype=torch.bfloat16))


def test_integer_storage_and_non_float_inputs_are_numpys():
    assert_same_bits(spec((4,), "uint8"), np.array([0.0, 1.0, 254.0, 255.0], np.float32), on_device=False)
    assert_same_error(spec((2,), "uint8"), np.array([1.0, 256.0], np.float32))
    assert_same_error(spec((2,), "int8"), np.array([1.0, 2.5], np.float32))
    assert_same_bits(spec((3,), "uint16"), np.array([0, 7, 65535], np.int64), on_device=False)
    assert_same_bits(spec((2,), "float16"), np.array([True, False]), on_device=False)
    assert_same_error(spec((2,), "float16"), np.array([1 + 2j, 0j]))


# -- bf16 -------------------------------------------------------------------------------------------------
def test_bf16_ties_subnormals_and_overflow():
    bits = np.array([0x3F808000, 0x3F818000, 0x3F80_7FFF, 0x3F80_8001, 0x0000_8000, 0x0001_8000, 0x8000_0000,
                     0x0000_0001, 0x807F_FFFF, 0x7F7F_7FFF, 0xFF7F_7FFF], np.uint32)
    values = bits.view(np.float32)  # ties (even / odd kept bit), subnormals, negative zero, near the max
    stored = assert_same_bits(spec(values.shape, "uint16", "bf16"), values)["x"]
    assert stored[:2].tolist() == [0x3F80, 0x3F82], "ties to even"
    assert_same_bits(spec(values.shape, "uint16", "bf16"), values.astype(np.float64))
    assert_same_error(spec((1,), "uint16", "bf16"), np.array([0x7F7F8000], np.uint32).view(np.float32))  # -> inf


# -- int8-token -------------------------------------------------------------------------------------------
def heavy_tailed_latents(rng, shape=(2, 256, 40)) -> np.ndarray:
    x = rng.standard_t(4, shape) * rng.lognormal(0, 0.5, shape[-1]) + rng.normal(0, 0.5, shape[-1])
    x[..., [3, 17]] *= 40.0  # outlier channels
    x[0, 5] = 0.0  # an all-zero token (after centring, not exactly)
    x[1, :, 7] = 2.5  # a constant channel: centred to zeros
    x[1, 9] = x[1, 9].mean()
    return x.astype(np.float32)


@pytest.mark.parametrize("step", [0.0, 0.15])
@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")  # numpy's, on `huge`
def test_int8_token_is_numpys_on_heavy_tailed_tokens(step):
    rng = np.random.default_rng(1)
    x = heavy_tailed_latents(rng)
    assert_same_bits(spec(x.shape, "int8", "int8-token", step), x)
    assert_same_bits(spec(x.shape, "int8", "int8-token", step), x.astype(np.float64))
    assert_same_bits(spec((2, 4, 3), "int8", "int8-token", step), np.zeros((2, 4, 3), np.float32))
    assert_same_bits(spec(x.shape, "int8", "int8-token", step), torch.from_numpy(x).to(torch.bfloat16))
    # Sums that cancel: their last bits depend on the order of the additions.
    cancel = np.zeros((1, 9, 5), np.float32)
    cancel[0, :, 0] = [2.0**40, 1.0, -(2.0**40), 3.0, 2.0**-20, 2.0**40, -(2.0**40), 1.0, 0.5]
    cancel[0, :, 1:] = rng.normal(0, 1, (9, 4))
    assert_same_bits(spec(cancel.shape, "int8", "int8-token", step), cancel)
    # Past float32's square root of the max the squares overflow to inf (IEEE alike on both sides);
    # past its max the centring overflows and inf / inf gives NaN, whose cast to int8 C leaves undefined:
    # numpy computes that field.
    huge = x.copy()
    huge[0, 3, 0] = 3e38
    assert_same_bits(spec(huge.shape, "int8", "int8-token", step), huge)
    huge[0, :, 0], huge[0, 3, 0] = -3.4e38, 3.4e38
    assert_same_bits(spec(huge.shape, "int8", "int8-token", step), huge, on_device=False)
    assert_same_error(spec(x.shape, "int8", "int8-token", step), np.where(x > 30, np.nan, x))


def test_an_undecided_float32_mean_is_computed_by_numpy_and_only_there():
    # Row 0 cancels (its float64 sum depends on the order: undecided); rows 1-2 are ordinary.
    values = torch.tensor([[2.0**60, 1.0, -(2.0**60), 0.0], [1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 0.0, 0.0]])
    calls = []

    def numpy_means(rows):
        calls.append(rows.copy())
        return np.full(len(rows), 7.0)

    mean = _float32_mean(values, -1, numpy_means)
    assert len(calls) == 1 and calls[0].tolist() == [values[0].tolist()]
    assert mean.tolist() == [7.0, 2.5, 0.1875]
    rooted = _float32_mean(values[1:], -1, numpy_means, torch.sqrt)
    np.testing.assert_array_equal(rooted.numpy(), np.sqrt([2.5, 0.1875]).astype(np.float32))


def test_a_mean_is_undecided_within_the_stated_bound_of_a_float32_rounding():
    """Four values with an exact float64 sum s = 2 + 2**-23 + c: their mean lies c / 4 above the
    midpoint 0.5 + 2**-25 between two float32 numbers. The bound, 4 n 2**-53 sum|x| + 4 2**-52 |s|
    (24 2**-52 s / 2 here), divided by n = 4, is 6 2**-52 (s / 2): a mean 5 2**-52 above the midpoint
    is numpy's to decide, one 6.5 2**-52 above is the device's."""
    calls = []

    def numpy_means(rows):
        calls.append(len(rows))
        return rows.astype(np.float64).sum(axis=-1) / rows.shape[-1]

    rows = torch.tensor([[1.0, 1.0 + 2**-23, c, 0.0] for c in (20 * 2.0**-52, 26 * 2.0**-52)])
    assert rows.double().sum(-1).tolist() == [2 + 2**-23 + 20 * 2**-52, 2 + 2**-23 + 26 * 2**-52], "exact sums"
    mean = _float32_mean(rows, -1, numpy_means)
    assert calls == [1], "the first mean only"
    assert mean.tolist() == [0.5 + 2**-24, 0.5 + 2**-24]


def crafted_mean_at_a_float32_tie() -> np.ndarray:
    """16 float32 values whose squares average to (1 + 2**-24)**2 exactly: their rms is the midpoint
    between the float32 numbers 1 and 1 + 2**-23 (numpy rounds it to even, 1.0)."""
    return np.array([1.0] * 12 + [2.0, 2.0**-10, 2.0**-10, 2.0**-22], np.float32)


def test_the_int8_token_statistics_are_numpys_where_the_device_cannot_decide():
    rng = np.random.default_rng(5)
    x = heavy_tailed_latents(rng, (2, 16, 24))
    x[1, :, 2] = crafted_mean_at_a_float32_tie()  # a channel whose rms is a float32 tie
    x[0, :, 5] = [0.5, 0.5 + 2**-24, 3 * 2.0**-52, 0.0] * 4  # a channel whose mean is within reach of a tie
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(_column_mean(t).numpy(), x.mean(axis=-2, dtype=np.float64).astype(np.float32))
    np.testing.assert_array_equal(_column_rms(t).numpy(),
                                  np.sqrt(np.square(x).mean(axis=-2, dtype=np.float64)).astype(np.float32))
    tie = torch.from_numpy(crafted_mean_at_a_float32_tie()[None])
    assert _row_rms(tie).tolist() == [1.0] and _column_rms(tie.T).tolist() == [1.0]
    np.testing.assert_array_equal(_row_rms(t).numpy(),
                                  np.sqrt(np.square(x).mean(axis=-1, dtype=np.float64)).astype(np.float32))
    # What numpy computes for them: the whole array's means, a row or a column at a time.
    wide = (rng.standard_t(2, (3, 50, 4)) * 1e6).astype(np.float32)
    wide[0, 0, 0] = 1e30
    np.testing.assert_array_equal(_token_means(wide.transpose(0, 2, 1).reshape(-1, 50)),
                                  wide.mean(axis=-2, dtype=np.float64).reshape(-1))
    np.testing.assert_array_equal(_row_means(wide.reshape(-1, 4)), wide.mean(axis=-1, dtype=np.float64).reshape(-1))


def ulps_from_numpys(numpy_function, shifts):
    """A device function that is numpy's moved by `shifts(n)` ulps (each -2..2), whatever the host: a GPU's
    log differs from numpy's in the last bits, a host CPU's torch.log may or may not (it matched numpy's on
    all of a million inputs on an Intel Xeon with AVX-512). Both are within an ulp of the exact log, so two
    ulps is the most they can part (the bound shards/torch_codecs.py's _LOG_ULPS covers four times over)."""
    def device_function(x: torch.Tensor) -> torch.Tensor:
        values = numpy_function(x.numpy())
        ulps = shifts(values.size).reshape(values.shape)
        for k in (1, 2):
            values = np.where(ulps >= k, np.nextafter(values, np.inf), values)
            values = np.where(ulps <= -k, np.nextafter(values, -np.inf), values)
        return torch.from_numpy(values)
    return device_function


def random_ulps(seed: int):
    rng = np.random.default_rng(seed)
    return lambda n: rng.integers(-2, 3, n)


def test_the_log_margins_cover_the_devices_distance_from_numpy():
    """log-depth and prob-u8 round values computed through log: a device's log and numpy's differ in the
    last bits; the margin that decides what numpy recomputes must cover that. The device here is numpy's
    log moved by up to 2 ulps (the most two logs within an ulp of exact can part), so the margins are
    exercised on every CPU; the host's own torch.log is checked too, without a premise on how it differs."""
    rng = np.random.default_rng(6)
    depth = np.exp(rng.uniform(-6, 7, 1_000_000))
    # Depths just above the shallowest one (log_min 0.5): the difference is log's error alone there.
    depth = np.concatenate([depth, np.exp(rng.uniform(0.5, 0.55, 1_000_000))])
    p = rng.uniform(0, 1, 1_000_000)
    p[:1000] = rng.uniform(0, 1e-6, 1000)
    p[1000:200_000] = rng.uniform(5e-6, 8e-6, 199_000)  # logits near -PROB_LOGIT_MAX: code 1 and its half
    exact_logit = (np.clip(np.log(p) - np.log1p(-p), -PROB_LOGIT_MAX, PROB_LOGIT_MAX) + PROB_LOGIT_MAX) / PROB_LOGIT_STEP
    devices = {"ulps off numpy": (ulps_from_numpys(np.log, random_ulps(1)), ulps_from_numpys(np.log1p, random_ulps(2))),
               "this host's torch": (torch.log, torch.log1p)}
    for name, (log, log1p) in devices.items():
        with mock.patch.object(torch_codecs, "_device_log", log), mock.patch.object(torch_codecs, "_device_log1p", log1p):
            for log_min, step in ((np.log(depth.min()), 2**-8), (-30.0, 1e-3), (2.5, 0.37), (0.5, 2**-8)):
                steps, margin = _log_steps(torch.from_numpy(depth), torch.tensor(log_min, dtype=torch.float64), step)
                distance = np.abs(steps.numpy() - (np.log(depth) - log_min) / step)
                assert (distance <= margin.numpy()).all(), (name, log_min, step)
                if name == "ulps off numpy":  # what fails when the margins are removed
                    assert (distance > 0).sum() > 100_000, (log_min, step)
            steps, margin = _logit_steps(torch.from_numpy(p))
            distance = np.abs(steps.numpy() - exact_logit)
            assert (distance <= margin.numpy()).all(), name
            if name == "ulps off numpy":
                assert (distance > 0).sum() > 100_000


# -- log-depth --------------------------------------------------------------------------------------------
def half_step_depths(step: float, count: int) -> np.ndarray:
    """Depths whose numpy log lies exactly on a half-step boundary above log(1) = 0: rounding ties."""
    found = []
    for k in range(200, 200 + 40 * count):
        target = (k + 0.5) * step
        d = np.exp(target)
        for _ in range(40):
            got = np.log(d)
            if got == target:
                found.append(d)
                break
            d = np.nextafter(d, np.inf if got < target else 0.0)
        if len(found) == count:
            break
    return np.array(found)


def test_log_depth_ties_invalid_pixels_and_refusals():
    step = 2**-8
    ties = half_step_depths(step, 6)
    assert len(ties) == 6
    rng = np.random.default_rng(2)
    depth = np.concatenate([[1.0, 0.0, 0.0], ties, rng.uniform(1.0, 90.0, 200), [np.nextafter(1.0, 2.0)]])
    stored = assert_same_bits(spec(depth.shape, "uint16", "log-depth", step), depth)
    assert stored["x__log_min"] == 0.0 and stored["x"][1] == 0
    codes = stored["x"][3:9].astype(int) - 1
    assert (codes % 2 == 0).all() and (np.abs(codes - np.log(ties) / step) == 0.5).all(), "ties to even"
    assert_same_bits(spec(depth.shape, "uint16", "log-depth", step), depth.astype(np.float32))
    assert_same_bits(spec((4,), "uint16", "log-depth", step), np.zeros(4))  # nothing valid
    assert_same_bits(spec((2,), "uint16", "log-depth", 2**-4), [np.finfo(np.float64).tiny, 1e300])
    widest = assert_same_bits(spec((2,), "uint16", "log-depth", step), [1.0, np.exp(65534.4 * step)])["x"]
    assert widest.tolist() == [1, 65535]
    assert_same_error(spec((2,), "uint16", "log-depth", step), [1.0, np.exp(65534.6 * step)])  # code 65536
    assert_same_error(spec((3,), "uint16", "log-depth", step), [1.0, -0.5, 2.0])


def test_a_code_at_a_half_step_boundary_is_rounded_by_numpy():
    steps = torch.tensor([0.5, 1.5 + 2**-20, 2.25, 3.5, 4.0, 5.5 + 2**-19], dtype=torch.float64)
    margin = torch.full_like(steps, 2**-20)
    where = torch.tensor([True, True, True, False, True, True])
    rounded = _rint_as_numpy(steps, margin, where, lambda inputs: inputs * 10 + 0.25,
                             torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=torch.float64))
    assert rounded.tolist() == [10, 20, 2, 4, 4, 6]  # numpy's values where undecided (and asked), else rint


def test_log_depth_where_the_devices_log_and_numpys_disagree_at_a_half_step():
    """A depth d whose device log lies an ulp above numpy's (by construction: a host's torch.log may equal
    numpy's everywhere), the shallowest depth d0, and the step 2 (log d - log d0) (numpy's log): numpy's
    code is round(0.5) + 1 = 1; the device's log alone says 2, so only the margin gets numpy's."""
    one_ulp_above = ulps_from_numpys(np.log, lambda n: np.ones(n, dtype=int))
    d0 = 2.5
    for d in np.linspace(3.0, 10.0, 50):
        step = 2 * (np.log(d) - np.log(d0))
        if (one_ulp_above(torch.tensor([d])).item() - np.log(d0)) / step > 0.5:  # an ulp above reaches past the tie
            break
    else:
        raise AssertionError("no depth in [3, 10] whose log an ulp up passes the half step")
    with mock.patch.object(torch_codecs, "_device_log", one_ulp_above):
        steps, _ = _log_steps(torch.tensor([d0, d]), torch.tensor(np.log(d0), dtype=torch.float64), step)
        assert torch.round(steps).tolist() == [0, 1], "the device's own rounding says code 2"
        stored = assert_same_bits(spec((3,), "uint16", "log-depth", step), np.array([d0, d, 0.0]))
    assert stored["x"].tolist() == [1, 1, 0]


# -- prob-u8 ----------------------------------------------------------------------------------------------
def test_prob_u8_ends_tails_and_refusals():
    k = np.arange(0, 254)
    ties = 1 / (1 + np.exp(-((k + 0.5) * PROB_LOGIT_STEP - PROB_LOGIT_MAX)))  # about half a code
    p = np.concatenate([[0.0, 1.0, 1e-300, 1 - 1e-16, 0.5, 3e-4], ties, np.nextafter(ties, 1.0)])
    stored = assert_same_bits(spec(p.shape, "uint8", "prob-u8"), p)["x"]
    assert stored[:2].tolist() == [0, 255] and stored[2] == 1 and stored[3] == 254
    many = np.random.default_rng(8).uniform(0, 1, 1_000_000).astype(np.float32)  # the logit in float64, as numpy
    assert_same_bits(spec(many.shape, "uint8", "prob-u8"), many)
    assert_same_error(spec((2,), "uint8", "prob-u8"), [0.5, 1.0 + 1e-12])


# -- the outputs of a teacher, as the caching job encodes them ---------------------------------------------
def test_encode_outputs_is_encode_arrays_for_tensors_and_arrays():
    rng = np.random.default_rng(3)
    specs = [spec((2, 64, 24), "int8", "int8-token", 0.15, "latents"),
             spec((3, 8, 8), "uint16", "log-depth", 2**-8, "depth"),
             spec((2, 3, 8, 8), "int16", "fixed", 1 / 16, "flow"),
             spec((1, 6, 4, 4, 4), "float16", name="camray")]
    values = {"latents": heavy_tailed_latents(rng, (2, 64, 24)), "depth": rng.uniform(0.5, 9, (3, 8, 8)),
              "flow": rng.normal(0, 3, (2, 3, 8, 8)).astype(np.float32),
              "camray": rng.normal(0, 1, (1, 6, 4, 4, 4)).astype(np.float32)}
    want = encode_arrays(specs, values)
    for given in (values, {k: torch.from_numpy(np.asarray(v)) for k, v in values.items()}):
        got = encode_outputs(specs, given)
        assert list(got) == list(want)
        for name, array in want.items():
            assert got[name].flags.c_contiguous and got[name].tobytes() == array.tobytes(), name
    with mock.patch.object(torch_codecs, "encode_tensor") as device_path:  # CPU fields: numpy, the faster there
        encode_outputs(specs, {k: torch.from_numpy(np.asarray(v)) for k, v in values.items()})
    assert not device_path.called
    # Views in Fortran order, as teachers hand over (the oracle's fancy-indexed maps): C-order stored arrays.
    views = {**values, "depth": np.asfortranarray(values["depth"]), "flow": np.asfortranarray(values["flow"])}
    for given in (views, {k: torch.from_numpy(np.asarray(v)) for k, v in views.items()}):
        got = encode_outputs(specs, given)
        assert all(a.flags.c_contiguous for a in got.values()) and got["depth"].tobytes() == want["depth"].tobytes()
    with pytest.raises(ValueError, match="'flow': missing"):
        encode_outputs(specs, {k: v for k, v in values.items() if k != "flow"})


# -- decode -----------------------------------------------------------------------------------------------
def stored_tensors(s: FieldSpec, stored: dict[str, np.ndarray], batch: int = 0) -> dict[str, torch.Tensor]:
    """As the student's batches carry them: uint16 as int16 bits, optionally stacked in a batch."""
    out = {}
    for name, array in stored.items():
        array = array.view(np.int16) if array.dtype == np.uint16 else array
        out[name] = torch.from_numpy(np.stack([array] * batch) if batch else np.asarray(array))
    return out


def near_a_float32_tie(values: np.ndarray, ulps: int = 4) -> np.ndarray:
    """Where a float64 value lies within `ulps` float64 ulps of a float32 rounding tie: there, two exps
    within an ulp of exact (torch's and numpy's, whose last bits differ by CPU) may round to neighbouring
    float32s. Elsewhere their float32 results are equal on every CPU."""
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's max: inf, never near a tie
        rounded = values.astype(np.float32).astype(np.float64)
        toward = np.nextafter(values.astype(np.float32), np.where(values > rounded, np.inf, -np.inf).astype(np.float32))
        tie = (rounded + toward.astype(np.float64)) / 2
        return np.isfinite(tie) & (np.abs(values - tie) <= ulps * np.spacing(np.abs(values)))


def exps_of(s: FieldSpec, stored: dict[str, np.ndarray]) -> np.ndarray | None:
    """The float64 values numpy takes exp for (log-depth, prob-u8), or None for arithmetic decodes."""
    codes = stored[s.name].astype(np.float64)
    if s.encoding == "log-depth":
        return np.where(codes > 0, np.exp(stored[s.name + "__log_min"] + (codes - 1) * s.step), 0.0)
    if s.encoding == "prob-u8":
        return 1 / (1 + np.exp(-((codes - 1) * PROB_LOGIT_STEP - PROB_LOGIT_MAX)))
    return None


def assert_decodes_as_numpy(s: FieldSpec, stored: dict[str, np.ndarray]) -> None:
    """Bit for bit numpy's, except (decodes through exp) within one float32 ulp where numpy's float64
    value lies so near a float32 tie that exp's last bit decides (derived here, from this host's numpy)."""
    want = np.asarray(decode_field(s, stored), np.float32)
    exps = exps_of(s, stored)
    undecidable = np.zeros(want.shape, bool) if exps is None else near_a_float32_tie(exps)
    assert undecidable.mean() < 1e-3, "a float32 tie within reach is rare"
    for batch in (0, 3):
        got = decode_tensor(s, stored_tensors(s, stored, batch)).numpy()
        assert got.dtype == np.float32
        expected = np.stack([want] * batch) if batch else want
        loose = np.stack([undecidable] * batch) if batch else undecidable
        np.testing.assert_array_equal(got[~loose].view(np.uint32), expected[~loose].view(np.uint32))
        ulps_apart = np.abs(got[loose].view(np.int32).astype(np.int64) - expected[loose].view(np.int32))
        assert (ulps_apart <= 1).all()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # codes past float32's max: inf alike
def test_decode_is_numpys_for_every_code():
    every_u16 = np.arange(65536, dtype=np.uint16)
    assert_decodes_as_numpy(spec((65536,), "uint16", "bf16"), {"x": every_u16})  # NaN payloads included
    for log_min, step in ((-2.2, 2**-8), (0.0, 2**-8), (3.7, 2**-4), (-40.1, 1e-3)):
        assert_decodes_as_numpy(spec((65536,), "uint16", "log-depth", step),
                                {"x": every_u16, "x__log_min": np.array(log_min)})
    assert_decodes_as_numpy(spec((256,), "uint8", "prob-u8"), {"x": np.arange(256, dtype=np.uint8)})
    every_i16 = np.arange(-32768, 32768, dtype=np.int16)
    for step in (1 / 16, 0.1):
        assert_decodes_as_numpy(spec((65536,), "int16", "fixed", step), {"x": every_i16})
    finite = every_u16.view(np.float16)[np.isfinite(every_u16.view(np.float16))]  # encode refuses NaN and inf
    assert_decodes_as_numpy(spec(finite.shape, "float16"), {"x": finite})
    rng = np.random.default_rng(4)
    s = spec((2, 64, 24), "int8", "int8-token", 0.15)
    stored = encode_field(s, heavy_tailed_latents(rng, (2, 64, 24)))
    assert [p.name for p in stored_specs([s])] == list(stored)
    assert_decodes_as_numpy(s, stored)
