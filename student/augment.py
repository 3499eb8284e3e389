"""Consistent augmentation of a cached clip: a horizontal flip or a crop is applied jointly to the
frames, the region boxes and every cached teacher map, so targets stay the truth of the augmented view.

Field layouts are the cache's (README "The cache layout"): frames [T, H, W, 3], depth and dyn_mask
[T, h, w], flow [2, T, h, w] (backward, pixels of its own map, channel 0 = u to the right), camray
[W, 6, 16, gh, gw] Plucker (d, m = o x d) in each window's first camera frame (OpenCV: x right, y down,
z forward), latents [hooks, W * 2048, C] (per window, tokens in (t, h, w) order). Regions are
manifests.regions.Region with normalized boxes.

Rules (each checked against ground truth rendered for the mirrored / cropped view, tests/test_augment.py):
- Flip: images and maps mirror along x. Flow: u -> -u (a displacement to the right becomes one to the
  left; v unchanged). camray: a mirror image is what the camera reflected through its own x axis sees:
  with S = diag(-1, 1, 1) in the reference camera frame, d -> S d and o -> S o, and since the cross
  product of two reflected vectors is det(S) S (o x d), m -> -S m = (m_x, -m_y, -m_z); the 16 x 16 ray
  grid mirrors too (cell centres (gx + 0.5) W / gw map to W minus themselves, an exact permutation).
  Exact when the principal point is at the image centre (every teacher here resizes the full frame).
- Crop (+ optional resize): maps are cut on their own pixel grid from the same normalized window and
  resized by nearest neighbour at pixel centres (no blending across depth edges); flow keeps its pixel
  units under a crop, and a resize from (ch, cw) to (oh, ow) scales u by ow / cw and v by oh / ch.
  camray is NOT resampled: the crop's ray grid needs the intrinsics and the cell centres of the new
  view, which the cache does not hold, so a crop marks camray invalid.
- Latents: a flipped or cropped view's teacher features are not the flipped / cropped token grid (the
  ViT is not equivariant), so they are marked invalid, unless `approximate_latents` opts into the
  mirrored token grid for flips (crops stay invalid).
- Answers are not rewritten: a loader must not flip samples whose answer names left / right.

numpy only, no pipeline/ import: the student consumes the cache as data.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from manifests.regions import Region
from shards.teacher_fields import DENSE_MAPS, GRID, SLOTS, TEACHER_FIELDS

# Plucker channels (d_x, d_y, d_z, m_x, m_y, m_z) under the reflection x -> -x of the camera frame.
RAY_FLIP_SIGNS = np.array([-1.0, 1.0, 1.0, 1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Augmented:
    arrays: dict[str, np.ndarray]
    regions: list[Region]
    valid: dict[str, bool]  # per teacher target: False = its loss is masked for this sample


def _valid(arrays: dict, **invalid: bool) -> dict[str, bool]:
    return {name: not invalid.get(name, False) for name in TEACHER_FIELDS if name in arrays}


def flip_regions(regions: Sequence[Region]) -> list[Region]:
    return [replace(r, boxes=tuple((1.0 - x1, y0, 1.0 - x0, y1) for x0, y0, x1, y1 in r.boxes)) for r in regions]


def flip_rays(camray: np.ndarray) -> np.ndarray:
    """[..., 6, T, gh, gw] Plucker rays of the mirrored view."""
    signs = RAY_FLIP_SIGNS.reshape(6, 1, 1, 1).astype(camray.dtype)
    return camray[..., ::-1] * signs


def flip_latent_grid(latents: np.ndarray, grid: tuple[int, int, int] = (SLOTS, GRID, GRID)) -> np.ndarray:
    """The approximation: each window's token grid mirrored along w. Not what the teacher would say."""
    hooks, tokens, channels = latents.shape
    per_window = int(np.prod(grid))
    if tokens % per_window:
        raise ValueError(f"latents have {tokens} tokens, not a multiple of {per_window} per window")
    shaped = latents.reshape(hooks, tokens // per_window, *grid, channels)
    return shaped[:, :, :, :, ::-1].reshape(latents.shape)


def hflip(arrays: dict[str, np.ndarray], regions: Sequence[Region] = (),
          approximate_latents: bool = False) -> Augmented:
    """The horizontally mirrored clip (see the module docstring for each field's rule)."""
    out = dict(arrays)
    if "frames" in arrays:
        out["frames"] = arrays["frames"][:, :, ::-1]
    for name in ("depth", "dyn_mask"):
        if name in arrays:
            out[name] = arrays[name][..., ::-1]
    if "flow" in arrays:
        flow = arrays["flow"][..., ::-1].copy()
        flow[0] = -flow[0]
        out["flow"] = flow
    if "camray" in arrays:
        out["camray"] = flip_rays(arrays["camray"])
    if "latents" in arrays and approximate_latents:
        out["latents"] = flip_latent_grid(arrays["latents"])
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    return Augmented(out, flip_regions(regions), _valid(arrays, latents=not approximate_latents))


def crop_bounds(window: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel bounds (r0, r1, c0, c1) of a normalized window [x0, y0, x1, y1] on a grid of size (H, W),
    rounded to the nearest pixel edge (so grids of different sizes agree to half a pixel of each)."""
    x0, y0, x1, y1 = window
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"crop window {window} is not a normalized [x0, y0, x1, y1] inside the image")
    height, width = size
    r0, r1 = int(round(y0 * height)), int(round(y1 * height))
    c0, c1 = int(round(x0 * width)), int(round(x1 * width))
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"crop window {window} is less than a pixel on a {height}x{width} grid")
    return r0, r1, c0, c1


def nearest_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., h, w] -> [..., H, W]: the source pixel under each destination pixel centre."""
    height, width = maps.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return maps[..., rows[:, None], cols[None, :]]


def bilinear_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[T, h, w, C] uint8 -> [T, H, W, C], pixel-centre aligned (as PIL / torch align_corners=False)."""
    def axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0.0, src - 1)
        low = np.floor(x).astype(np.int64)
        return low, np.minimum(low + 1, src - 1), x - low

    r0, r1, fr = axis(frames.shape[1], size[0])
    c0, c1, fc = axis(frames.shape[2], size[1])
    data = frames.astype(np.float32)
    top = data[:, r0] * (1 - fr)[None, :, None, None] + data[:, r1] * fr[None, :, None, None]
    out = top[:, :, c0] * (1 - fc)[None, None, :, None] + top[:, :, c1] * fc[None, None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def crop_regions(regions: Sequence[Region], window: tuple[float, float, float, float]) -> list[Region]:
    """Boxes in the window's normalized coordinates, clipped to it; a frame whose box falls outside the
    window loses its box (the mark is not visible there)."""
    x0, y0, x1, y1 = window
    width, height = x1 - x0, y1 - y0
    out = []
    for region in regions:
        frames, boxes = [], []
        for frame, (bx0, by0, bx1, by1) in zip(region.frame_indices, region.boxes):
            box = (min(max((bx0 - x0) / width, 0.0), 1.0), min(max((by0 - y0) / height, 0.0), 1.0),
                   min(max((bx1 - x0) / width, 0.0), 1.0), min(max((by1 - y0) / height, 0.0), 1.0))
            if box[2] > box[0] and box[3] > box[1]:
                frames.append(frame)
                boxes.append(box)
        out.append(replace(region, frame_indices=tuple(frames), boxes=tuple(boxes)))
    return out


def crop(arrays: dict[str, np.ndarray], window: tuple[float, float, float, float], regions: Sequence[Region] = (),
         frame_size: tuple[int, int] | None = None, map_size: tuple[int, int] | None = None) -> Augmented:
    """The clip cut to a normalized window [x0, y0, x1, y1], each array on its own grid; frame_size /
    map_size (H, W) resize the cut frames / maps (None keeps the cut size). camray and latents become
    invalid (module docstring)."""
    out = dict(arrays)
    if "frames" in arrays:
        frames = arrays["frames"]
        r0, r1, c0, c1 = crop_bounds(window, frames.shape[1:3])
        cut = frames[:, r0:r1, c0:c1]
        out["frames"] = bilinear_resize(cut, frame_size) if frame_size else cut
    for name in DENSE_MAPS:
        if name not in arrays:
            continue
        data = arrays[name]
        r0, r1, c0, c1 = crop_bounds(window, data.shape[-2:])
        cut = data[..., r0:r1, c0:c1]
        if map_size:
            cut = nearest_resize(cut, map_size)
            if name == "flow":
                # Flow is in pixels of its own map: a map stretched k times has k times longer vectors.
                scale = np.array([map_size[1] / (c1 - c0), map_size[0] / (r1 - r0)], dtype=np.float64)
                cut = (cut * scale.reshape(2, *([1] * (cut.ndim - 1)))).astype(data.dtype)
        out[name] = cut
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    return Augmented(out, crop_regions(regions, window), _valid(arrays, latents=True, camray=True))


@dataclass(frozen=True)
class AugmentConfig:
    """hflip_prob: chance of a mirrored view; crop_prob and crop_scale (min, max fraction of each side)
    for a random crop resized back to the stored sizes; approximate_latents: keep mirrored token grids
    as latent targets of flipped views instead of masking them."""

    hflip_prob: float = 0.0
    crop_prob: float = 0.0
    crop_scale: tuple[float, float] = (0.6, 1.0)
    approximate_latents: bool = False

    def __post_init__(self):
        if not (0.0 <= self.hflip_prob <= 1.0 and 0.0 <= self.crop_prob <= 1.0):
            raise ValueError("augment probabilities must lie in [0, 1]")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"augment crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")


def augment(arrays: dict[str, np.ndarray], regions: Sequence[Region], config: AugmentConfig,
            rng: np.random.Generator) -> Augmented:
    """A random view drawn by `rng` (the loader seeds it per sample, so a resumed run draws the same)."""
    result = Augmented(dict(arrays), list(regions), _valid(arrays))
    if rng.random() < config.crop_prob:
        side_w, side_h = rng.uniform(*config.crop_scale, size=2)
        x0, y0 = rng.uniform(0.0, 1.0 - side_w), rng.uniform(0.0, 1.0 - side_h)
        sizes = {name: arrays[name].shape[-2:] for name in DENSE_MAPS if name in arrays}
        frame_size = arrays["frames"].shape[1:3] if "frames" in arrays else None
        map_size = next(iter(sizes.values()), None)
        result = crop(result.arrays, (x0, y0, x0 + side_w, y0 + side_h), result.regions, frame_size, map_size)
    if rng.random() < config.hflip_prob:
        flipped = hflip(result.arrays, result.regions, config.approximate_latents)
        valid = {k: v and flipped.valid[k] for k, v in result.valid.items()}
        result = Augmented(flipped.arrays, flipped.regions, valid)
    return result
