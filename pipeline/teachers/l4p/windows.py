"""Merging of L4P's per-window outputs back into one clip.

The windows themselves (mirror padding, 16-frame windows at stride 8, the frame in every window slot)
are the cache's contract: shards/teacher_fields.py.

Per task, the overlapping window outputs are merged into [.., T_pad, H, W] by the rules of the
released L4P code with joint alignment off, as 4D-RGPT runs it (4D-RGPT itself caches 16-frame clips:
one window, no merge), and `crop` drops the padded tail:
- flow_2d_backward: `merge_flow` (a later window wins, except its first frame).
- dyn_mask: `merge_dyn_mask` (a later window wins, all its frames).
- depth: `merge_depth` (a later window aligned in inverse depth to the merged overlap, then it wins).
- camray is not merged: its rays are relative to each window's own first camera, so they are kept
  per window ([num_windows, 6, 16, gh, gw]) together with the windows' starts.

Arrays are numpy (CPU torch tensors are accepted wherever numpy converts them); the time axis is the
third from last in every merged array ([C, T, H, W] and [T, H, W] alike).
"""
from __future__ import annotations

import numpy as np



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


def _overwrite(windows, starts, keep_earlier_first_frame: bool) -> np.ndarray:
    stacked, starts, window = _stack_windows(windows, starts, min_dims=4)
    channels, _, height, width = stacked.shape[1:]
    merged = np.empty((channels, starts[-1] + window, height, width), dtype=stacked.dtype)
    covered_until = 0
    for values, start in zip(stacked, starts):
        first = 1 if keep_earlier_first_frame and start < covered_until else 0
        merged[:, start + first:start + window] = values[:, first:]
        covered_until = start + window
    return merged


def merge_flow(windows, starts) -> np.ndarray:
    """Backward flow windows [C, window, H, W] at `starts` -> [C, T_pad, H, W].

    A later window overwrites the frames it shares with earlier ones except its first frame: the flow
    there would point to the previous frame, which the window never saw, so the earlier window's value
    stays (a window whose first frame no earlier window covers writes it as well)."""
    return _overwrite(windows, starts, keep_earlier_first_frame=True)


def merge_dyn_mask(windows, starts) -> np.ndarray:
    """Motion logit windows [C, window, H, W] at `starts` -> [C, T_pad, H, W]: a later window overwrites
    all its frames, its first included (the released code's rule; no alignment)."""
    return _overwrite(windows, starts, keep_earlier_first_frame=False)


def safe_inverse(values: np.ndarray) -> np.ndarray:
    """1 / x where x > 0, else 0: depth <-> inverse depth, 0 standing for "none" both ways."""
    positive = values > 0
    return np.divide(1.0, values, out=np.zeros_like(values), where=positive)


def merge_depth(windows, starts) -> np.ndarray:
    """Depth windows [window, H, W] at `starts` -> [T_pad, H, W], in the first window's frame of reference.

    The released code's rule with joint alignment off (as 4D-RGPT runs it): each later window is mapped
    by one scale and shift on inverse depth, s * inv + b, fitted by least squares over every pixel of
    the frames it shares with the previous window (its values against the merged ones); the fit is
    applied to the whole window (an inverse depth <= 0 becomes depth 0), which then OVERWRITES all its
    frames, overlap included. Depth 0 counts as inverse depth 0 in the fit, as there. Computed in
    float64 (the released code fits in float32); an ill-posed fit (constant inverse depth over the
    overlap) takes numpy's minimum-norm least-squares solution. The result has the input's float dtype,
    at least float32.
    """
    stacked, starts, window = _stack_windows(windows, starts, min_dims=3)
    if not np.all(np.isfinite(stacked)):
        raise ValueError("depth windows must be finite")
    out_dtype = np.result_type(stacked.dtype, np.float32)
    stacked = stacked.astype(np.float64)
    merged = np.zeros((starts[-1] + window, *stacked.shape[2:]))
    merged[:window] = stacked[0]
    for index in range(1, len(starts)):
        start, overlap = starts[index], starts[index - 1] + window - starts[index]
        if overlap <= 0:
            raise ValueError(f"depth window {index} (start {start}) shares no frame with the previous one: "
                             "it cannot be aligned")
        x = safe_inverse(stacked[index, :overlap]).ravel()
        y = safe_inverse(merged[start:start + overlap]).ravel()
        (scale, shift), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
        merged[start:start + window] = safe_inverse(scale * safe_inverse(stacked[index]) + shift)
    return merged.astype(out_dtype)


def crop(merged, num_frames: int) -> np.ndarray:
    """Keep the first num_frames frames (time = third axis from last), dropping the padded tail."""
    merged = np.asarray(merged)
    if merged.ndim < 3:
        raise ValueError(f"expected [..., T, H, W], got shape {merged.shape}")
    if not 1 <= num_frames <= merged.shape[-3]:
        raise ValueError(f"cannot crop {merged.shape[-3]} merged frames to {num_frames}")
    return merged[..., :num_frames, :, :]
