"""Merging of L4P's per-window outputs back into one clip.

The windows themselves (mirror padding, 16-frame windows at stride 8, the frame in every window slot)
are the cache's contract: shards/teacher_fields.py.

Per task, the overlapping window outputs are merged into [.., T_pad, H, W] and `crop` drops the
padded tail:
- flow_2d_backward and dyn_mask: `merge_overwrite` (the later window wins, except its first frame).
- depth: `merge_depth` (each window aligned in inverse depth to what is already merged).
- camray is not merged: its rays are relative to each window's own first camera, so they are kept
  per window ([num_windows, 6, 16, gh, gw]) together with the windows' starts.

Arrays are numpy (CPU torch tensors are accepted wherever numpy converts them); the time axis is the
third from last in every merged array ([C, T, H, W] and [T, H, W] alike).
"""
from __future__ import annotations

import numpy as np

# Relative variance of the overlap's inverse depth under which an affine fit is ill-posed (a constant
# inverse depth fixes only s * x + b, not s and b apart).
_DEGENERATE_VARIANCE = 1e-12


def _stack_windows(windows, starts, min_dims: int) -> tuple[np.ndarray, list[int], int]:
    """Validated (windows [N, ..., window, H, W], starts, window length)."""
    starts = [int(start) for start in starts]
    if len(windows) == 0 or len(windows) != len(starts):
        raise ValueError(f"need one start per window and at least one window, got {len(windows)} "
                         f"windows and {len(starts)} starts")
    arrays = [np.asarray(w) for w in windows]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all windows must have the same shape, got {sorted(shapes)}")
    shape = arrays[0].shape
    if len(shape) != min_dims:
        raise ValueError(f"expected windows of {min_dims} dims (time third from last), got shape {shape}")
    window = shape[-3]
    if starts[0] != 0:
        raise ValueError(f"the first window must start at frame 0, got {starts[0]}")
    for previous, start in zip(starts, starts[1:]):
        if not previous < start <= previous + window:
            raise ValueError(f"window starts must increase and leave no gap (window {window}), got {starts}")
    return np.stack(arrays), starts, window


def merge_overwrite(windows, starts) -> np.ndarray:
    """Flow / dyn_mask windows [C, window, H, W] at `starts` -> [C, T_pad, H, W].

    A later window overwrites the frames it shares with earlier ones, except its first frame: backward
    flow (and the motion it implies) there would need the previous frame, which the window never saw,
    so the earlier window's value is kept. A window whose first frame no earlier window covers writes
    it as well.
    """
    stacked, starts, window = _stack_windows(windows, starts, min_dims=4)
    channels, _, height, width = stacked.shape[1:]
    merged = np.empty((channels, starts[-1] + window, height, width), dtype=stacked.dtype)
    covered_until = 0
    for values, start in zip(stacked, starts):
        first = 1 if start < covered_until else 0
        merged[:, start + first:start + window] = values[:, first:]
        covered_until = start + window
    return merged


def merge_depth(windows, starts) -> np.ndarray:
    """Depth windows [window, H, W] at `starts` -> [T_pad, H, W], in the first window's frame of reference.

    Each later window is mapped onto the merged clip by s * inv + b on inverse depth, (s, b) the least
    squares fit over every pixel of the frames it shares with what is already merged, and writes only
    its new frames; the shared frames keep their earlier values, so a frame never changes after it
    has served as an alignment target and the first window is kept as it is (up to float round-off).

    Guard: if the affine fit is ill-posed (constant inverse depth over the overlap) or would give any
    written frame a non-positive inverse depth (including s <= 0), the window falls back to the
    scale-only least squares fit s = <inv, target> / <inv, inv>, b = 0, which is positive because both
    inverse depths are. Inputs must be finite and positive; the result has the input's float dtype
    (at least float32) and is computed in float64.
    """
    stacked, starts, window = _stack_windows(windows, starts, min_dims=3)
    if not np.all(np.isfinite(stacked)) or not np.all(stacked > 0):
        raise ValueError("depth windows must be finite and positive")
    out_dtype = np.result_type(stacked.dtype, np.float32)
    inverse = 1.0 / stacked.astype(np.float64)
    merged = np.empty((starts[-1] + window, *stacked.shape[2:]))
    merged[:window] = inverse[0]
    covered_until = window
    for index, start in enumerate(starts[1:], start=1):
        overlap = covered_until - start
        if overlap == 0:
            raise ValueError(f"depth window {index} (start {start}) shares no frame with the earlier ones: "
                             "it cannot be aligned")
        x = inverse[index, :overlap].ravel()
        y = merged[start:covered_until].ravel()
        fresh = inverse[index, overlap:]
        x_mean, y_mean = x.mean(), y.mean()
        x_var = np.mean((x - x_mean) ** 2)
        aligned = None
        if x_var > _DEGENERATE_VARIANCE * x_mean**2:
            scale = np.mean((x - x_mean) * (y - y_mean)) / x_var
            aligned = scale * fresh + (y_mean - scale * x_mean)
        if aligned is None or not np.all(aligned > 0):
            aligned = (x @ y) / (x @ x) * fresh
        merged[covered_until:start + window] = aligned
        covered_until = start + window
    return (1.0 / merged).astype(out_dtype)


def crop(merged, num_frames: int) -> np.ndarray:
    """Keep the first num_frames frames (time = third axis from last), dropping the padded tail."""
    merged = np.asarray(merged)
    if merged.ndim < 3:
        raise ValueError(f"expected [..., T, H, W], got shape {merged.shape}")
    if not 1 <= num_frames <= merged.shape[-3]:
        raise ValueError(f"cannot crop {merged.shape[-3]} merged frames to {num_frames}")
    return merged[..., :num_frames, :, :]
