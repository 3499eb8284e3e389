"""Pictures of cached clips: colour maps for the teacher's fields and a one-PNG grid per clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE_HEIGHT = 160
GAP = 4
HEADER_HEIGHT = 20
TITLE_HEIGHT = 24
LABEL_WIDTH = 84
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
# Column order and headers; any other key in `arrays` (latents, cache_key, ...) is ignored.
COLUMNS = {
    "frames": "frames",
    "depth": "depth (near = warm)",
    "flow": "flow",
    "dyn_mask": "dyn_mask (sigmoid)",
    "camray": "camray direction",
}
_REGION_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))

# Turbo (Anton Mikhailov, Google, Apache-2.0) as Ruofei Du's polynomial fit: near-perceptually uniform
# without shipping a 256-entry table. Coefficients of x^0..x^5 for R, G, B.
_TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def _middlebury_wheel() -> np.ndarray:
    """The 55-colour wheel of Baker et al. (Middlebury flow): segment lengths chosen for perceptual
    spacing of hues, red -> yellow -> green -> cyan -> blue -> magenta -> red."""
    segments = ((15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
                (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0)))
    parts = []
    for length, start, end in segments:
        ramp = np.floor(255 * np.arange(length) / length) / 255
        parts.append(np.array(start) + ramp[:, None] * (np.array(end) - np.array(start)))
    return np.concatenate(parts).astype(np.float64)


_WHEEL = _middlebury_wheel()


def turbo(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 [..., 3] Turbo colours, 0 dark blue, 1 dark red."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    powers = x[..., None] ** np.arange(6)
    return np.clip(np.rint(powers @ _TURBO.T * 255), 0, 255).astype(np.uint8)


def inverse_depth_range(depth: np.ndarray) -> tuple[float, float]:
    """Robust (2nd, 98th percentile) range of the valid inverse depth: share it across a clip's frames so
    their colours compare."""
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return 0.0, 0.0
    low, high = np.percentile(1.0 / depth[valid], [2, 98])
    return float(low), float(high)


def depth_to_rgb(depth: np.ndarray, inverse_range: tuple[float, float] | None = None) -> np.ndarray:
    """Depth [H, W] -> uint8 [H, W, 3]: Turbo on inverse depth (near = warm), invalid depth black.

    Inverse depth because it spends the colour range on the near scene, where depth maps carry detail;
    inverse_range defaults to this frame's inverse_depth_range."""
    depth = np.asarray(depth, dtype=np.float64)
    low, high = inverse_depth_range(depth) if inverse_range is None else inverse_range
    valid = np.isfinite(depth) & (depth > 0)
    inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
    x = (inverse - low) / (high - low) if high > low else np.full(depth.shape, 0.5)
    return np.where(valid[..., None], turbo(x), 0).astype(np.uint8)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow [2, H, W] (u right, v down, pixels) -> uint8 [H, W, 3] on the Middlebury colour wheel.

    Hue is the direction (right red, down yellow-orange, left cyan-blue, up violet), saturation the
    magnitude over max_magnitude (default: this frame's largest); zero flow is white, flow beyond
    max_magnitude is drawn darker."""
    u, v = np.asarray(flow, dtype=np.float64)
    radius = np.hypot(u, v)
    scale = float(radius.max()) if max_magnitude is None else float(max_magnitude)
    radius = radius / max(scale, 1e-9)
    angle = np.arctan2(-v, -u) / np.pi
    position = (angle + 1) / 2 * (len(_WHEEL) - 1)
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % len(_WHEEL)
    f = (position - k0)[..., None]
    colour = ((1 - f) * _WHEEL[k0] + f * _WHEEL[k1]) / 255
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    return np.clip(np.rint(colour * 255), 0, 255).astype(np.uint8)


def mask_to_rgb(logit: np.ndarray) -> np.ndarray:
    """Motion logit [H, W] -> uint8 [H, W, 3] grey levels of its probability (black static, white moving)."""
    prob = 0.5 * (1 + np.tanh(0.5 * np.asarray(logit, dtype=np.float64)))  # the sigmoid, free of overflow
    grey = np.rint(prob * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def rays_to_rgb(camray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Plucker rays [6, gh, gw] -> uint8 [height, width, 3]: the unit direction d / |d| (channels 0-2,
    a network's d is not normalized) as (d + 1) / 2, nearest-upsampled so the ray grid stays visible."""
    direction = np.asarray(camray[:3], dtype=np.float64).transpose(1, 2, 0)
    norm = np.linalg.norm(direction, axis=-1, keepdims=True)
    direction = np.divide(direction, norm, out=np.zeros_like(direction), where=norm > 0)
    grid = np.rint(np.clip((direction + 1) / 2, 0, 1) * 255).astype(np.uint8)
    height, width = size
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.NEAREST))


def render_clip_png(
    arrays: dict[str, np.ndarray],
    out_path: str | Path,
    rows: int = 4,
    title: str | None = None,
    regions: list[dict] | None = None,
) -> Path:
    """Write a grid PNG of one clip: `rows` frames spread evenly over the clip, one column per field
    of COLUMNS present in `arrays` (frames [T,H,W,3] uint8, depth [T,h,w], flow [2,T,h,w],
    dyn_mask [T,h,w] logits, camray [6,T,gh,gw]); rows are labelled with the clip frame and, if
    arrays["timestamps"] [T] is given, its time.

    Depth and flow share one scale over the rendered frames so that colours compare down a column.
    regions: [{"mark_id": ..., "boxes": {clip_frame: [x0, y0, x1, y1] normalised}}] drawn on the frames.
    """
    fields = [name for name in COLUMNS if name in arrays]
    if not fields:
        raise ValueError(f"nothing to render: arrays has none of {list(COLUMNS)} (keys: {sorted(arrays)})")
    if regions and "frames" not in fields:
        raise ValueError("regions are drawn on the frames column, but arrays has no 'frames'")
    num_frames = _num_frames(arrays, fields)
    picked = np.unique(np.round(np.linspace(0, num_frames - 1, min(rows, num_frames))).astype(np.int64))

    tile_h, tile_w = _tile_size(arrays, fields[0])
    tiles = {name: _column(name, arrays[name], picked, (tile_h, tile_w)) for name in fields}

    top = (TITLE_HEIGHT if title else 0) + HEADER_HEIGHT
    width = LABEL_WIDTH + len(fields) * (tile_w + GAP) + GAP
    height = top + len(picked) * (tile_h + GAP) + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    if title:
        draw.text((GAP, GAP), title, fill=TEXT, font=font)

    for col, name in enumerate(fields):
        x = LABEL_WIDTH + GAP + col * (tile_w + GAP)
        draw.text((x, top - HEADER_HEIGHT + 4), COLUMNS[name], fill=TEXT, font=font)
        for row, frame in enumerate(picked):
            y = top + GAP + row * (tile_h + GAP)
            canvas.paste(Image.fromarray(tiles[name][row]), (x, y))
            if name == "frames" and regions:
                _draw_regions(draw, regions, int(frame), (x, y, tile_w, tile_h), font)

    for row, frame in enumerate(picked):
        y = top + GAP + row * (tile_h + GAP)
        label = f"frame {frame}"
        if "timestamps" in arrays:
            label += f"\nt = {float(arrays['timestamps'][frame]):.3f} s"
        draw.multiline_text((GAP, y + tile_h // 2 - 12), label, fill=TEXT, font=font, spacing=4)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path, format="PNG")
    return out_path


def _num_frames(arrays: dict[str, np.ndarray], fields: list[str]) -> int:
    # The time axis is first, except for the channel-first flow and camray.
    counts = {name: arrays[name].shape[1 if name in ("flow", "camray") else 0] for name in fields}
    if "timestamps" in arrays:
        counts["timestamps"] = len(arrays["timestamps"])
    if len(set(counts.values())) != 1:
        raise ValueError(f"fields disagree on the number of frames: {counts}")
    return next(iter(counts.values()))


def _tile_size(arrays: dict[str, np.ndarray], first: str) -> tuple[int, int]:
    # The teacher's square maps cover the whole frame (squashed to 224x224), so every tile takes the
    # frames' aspect ratio to line up with them.
    shape = arrays[first].shape
    height, width = shape[1:3] if first == "frames" else shape[-2:]
    return TILE_HEIGHT, max(1, round(TILE_HEIGHT * width / height))


def _column(name: str, data: np.ndarray, picked: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    tile_h, tile_w = size
    if name == "camray":
        return [rays_to_rgb(data[:, t], size) for t in picked]
    if name == "frames":
        images = [np.asarray(data[t], dtype=np.uint8) for t in picked]
    elif name == "depth":
        shared = inverse_depth_range(np.asarray(data[picked], dtype=np.float64))
        images = [depth_to_rgb(data[t], shared) for t in picked]
    elif name == "flow":
        magnitude = float(np.hypot(*np.asarray(data[:, picked], dtype=np.float64)).max())
        images = [flow_to_rgb(data[:, t], magnitude) for t in picked]
    else:
        images = [mask_to_rgb(data[t]) for t in picked]
    return [np.asarray(Image.fromarray(image).resize((tile_w, tile_h), Image.BILINEAR)) for image in images]


def _draw_regions(draw: ImageDraw.ImageDraw, regions: list[dict], frame: int, tile: tuple, font) -> None:
    x, y, tile_w, tile_h = tile
    for number, region in enumerate(regions):
        # Boxes arrive keyed by int, or by str after a JSON / Parquet round trip.
        boxes = {int(key): box for key, box in region["boxes"].items()}
        if frame not in boxes:
            continue
        x0, y0, x1, y1 = boxes[frame]
        colour = _REGION_COLORS[number % len(_REGION_COLORS)]
        corners = (x + x0 * tile_w, y + y0 * tile_h, x + x1 * tile_w, y + y1 * tile_h)
        draw.rectangle(corners, outline=colour, width=2)
        # A filled tag keeps the id legible whatever the picture under it.
        tag = draw.textbbox((corners[0], corners[1]), f" {region['mark_id']} ", font=font)
        draw.rectangle(tag, fill=colour)
        draw.text((corners[0], corners[1]), f" {region['mark_id']} ", fill=BACKGROUND, font=font)
