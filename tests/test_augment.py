"""student/augment.py against ground truth rendered for the mirrored / cropped view: the synthetic
renderer draws the mirrored scene (world reflected through x = 0, camera path and objects with it) and
the cropped scene (a centred window = the same focal length with a smaller image), and flipping /
cropping the original view's ground truth with augment.py must give that view's ground truth."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from manifests.regions import Region
from pipeline.geometry import plucker_rays
from pipeline.synthetic.render import render
from pipeline.synthetic.scene import sample_scene
from student.augment import AugmentConfig, augment, crop, flip_rays, hflip

SIZE = (48, 64)  # (H, W): even, so a centred crop keeps the principal point at the image centre
FRAMES = 4


def mirrored(scene):
    """The scene reflected through the world plane x = 0. The room box is symmetric about it; the
    camera's arc angle a -> pi - a and targets / objects have x negated; a box's yaw is negated
    (reflecting R(yaw) gives R(-yaw) times a reflection of its symmetric local x axis)."""
    cam = scene.camera
    camera = replace(cam, angle0=np.pi - cam.angle0, angular_speed=-cam.angular_speed,
                     target0=(-cam.target0[0], *cam.target0[1:]),
                     target_velocity=(-cam.target_velocity[0], *cam.target_velocity[1:]))
    flip = np.array([-1.0, 1.0, 1.0])
    objects = tuple(replace(o, p0=tuple(np.asarray(o.p0) * flip), v0=tuple(np.asarray(o.v0) * flip),
                            accel=tuple(np.asarray(o.accel) * flip), yaw=-o.yaw) for o in scene.objects)
    return replace(scene, camera=camera, objects=objects)


@pytest.fixture(scope="module")
def scene():
    return sample_scene(11, SIZE, FRAMES, 10.0)


@pytest.fixture(scope="module")
def views(scene):
    _, original = render(scene)
    _, mirror = render(mirrored(scene))
    return original, mirror


def clip_arrays(gt) -> dict[str, np.ndarray]:
    """Ground truth in the cache's layout (one window)."""
    return {"depth": gt.depth, "dyn_mask": gt.dyn_mask.astype(np.float32), "flow": gt.flow.transpose(1, 0, 2, 3),
            "camray": gt.rays()[None], "latents": np.arange(2 * 2048 * 3, dtype=np.float32).reshape(2, 2048, 3)}


def test_plucker_moment_of_reflected_ray():
    """m = o x d under x -> -x: the cross product of reflected vectors is det(S) S (o x d)."""
    rng = np.random.default_rng(0)
    o, d = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    s = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.cross(o * s, d * s), np.cross(o, d) * np.array([1.0, -1.0, -1.0]), atol=1e-12)


def test_flipped_rays_are_the_mirrored_cameras_rays(scene):
    """Rays of the mirrored camera path, computed by geometry.plucker_rays from the reflected poses
    (S_w R S_c, S_w c): float32 storage of the same float64 numbers, so 1e-6."""
    poses = scene.cam_to_world()
    s = np.diag([-1.0, 1.0, 1.0])
    mirror = poses.copy()
    mirror[:, :3, :3] = s @ poses[:, :3, :3] @ s
    mirror[:, :3, 3] = poses[:, :3, 3] @ s
    rays = plucker_rays(scene.K, poses, SIZE)
    np.testing.assert_allclose(flip_rays(rays[None])[0], plucker_rays(scene.K, mirror, SIZE), atol=1e-6)
    np.testing.assert_allclose(mirrored(scene).cam_to_world(), mirror, atol=1e-12)


def test_flip_matches_the_rendered_mirror_scene(views):
    original, mirror = views
    out = hflip(clip_arrays(original))
    # Same rays through reflected geometry: depth differs by float rounding of the hit distances only
    # (float32 storage, 2**-20 relative); a pixel whose ray grazes an object silhouette may hit on one
    # side and miss on the other, hence the allowance of 0.1% of the pixels.
    depth_ok = np.isclose(out.arrays["depth"], mirror.depth, rtol=1e-5)
    assert depth_ok.mean() > 0.999
    assert (out.arrays["dyn_mask"] == mirror.dyn_mask).mean() > 0.999
    flow_ok = np.all(np.isclose(out.arrays["flow"], mirror.flow.transpose(1, 0, 2, 3), atol=1e-3), axis=0)
    assert flow_ok.mean() > 0.999
    assert np.abs(mirror.flow[1:, 0]).max() > 0.1, "the scene moves: a sign error in u would show"
    np.testing.assert_allclose(out.arrays["camray"][0], mirror.rays(), atol=1e-5)
    assert out.valid == {"latents": False, "depth": True, "flow": True, "dyn_mask": True, "camray": True}
    twice = hflip(out.arrays)
    for name in ("depth", "flow", "camray"):
        np.testing.assert_array_equal(twice.arrays[name], clip_arrays(original)[name])


def test_flip_regions_and_latent_opt_in(views):
    original, _ = views
    regions = [Region(3, "red sphere", (0, 2), ((0.1, 0.2, 0.3, 0.4), (0.5, 0.0, 1.0, 0.5)))]
    out = hflip(clip_arrays(original), regions, approximate_latents=True)
    np.testing.assert_allclose(out.regions[0].boxes, [(0.7, 0.2, 0.9, 0.4), (0.0, 0.0, 0.5, 0.5)], atol=1e-12)
    assert out.valid["latents"]
    latents = clip_arrays(original)["latents"].reshape(2, 1, 8, 16, 16, 3)
    np.testing.assert_array_equal(out.arrays["latents"].reshape(2, 1, 8, 16, 16, 3), latents[:, :, :, :, ::-1])


def test_centred_crop_matches_the_rendered_cropped_view(scene, views):
    """A centred window of (H/2, W/2) is the same camera (same focal length, centred principal point)
    with a smaller image: render it and compare (crop without resize keeps pixel units)."""
    original, _ = views
    height, width = SIZE
    focal = scene.K[0, 0]
    fov = np.degrees(2 * np.arctan(0.5 * (width // 2) / focal))
    _, cut_view = render(replace(scene, image_size=(height // 2, width // 2), fov_x_deg=fov))
    window = (0.25, 0.25, 0.75, 0.75)
    out = crop(clip_arrays(original), window)
    # Same rays, same hits: float rounding only (see the flip test).
    assert np.isclose(out.arrays["depth"], cut_view.depth, rtol=1e-5).mean() > 0.999
    flow_ok = np.all(np.isclose(out.arrays["flow"], cut_view.flow.transpose(1, 0, 2, 3), atol=1e-3), axis=0)
    assert flow_ok.mean() > 0.999
    assert out.valid["camray"] is False and out.valid["latents"] is False and out.valid["depth"]

    # Resized back to the full size: the view of a camera with twice the focal length. Nearest
    # resampling reads each output pixel from a source centre up to half an output pixel away, so
    # compare robustly: the median flow error stays below 10% of the median flow (an unscaled flow
    # would be off by 50%).
    _, zoom_view = render(replace(scene, fov_x_deg=fov))
    resized = crop(clip_arrays(original), window, map_size=SIZE)
    truth = zoom_view.flow.transpose(1, 0, 2, 3)[:, 1:]
    error = np.median(np.abs(resized.arrays["flow"][:, 1:] - truth))
    assert error < 0.1 * np.median(np.abs(truth)), (error, np.median(np.abs(truth)))
    assert np.isclose(resized.arrays["depth"], zoom_view.depth, rtol=0.05).mean() > 0.9


def test_crop_boxes_and_random_views_are_reproducible(views):
    original, _ = views
    regions = [Region(1, None, (0, 1), ((0.0, 0.0, 0.5, 0.5), (0.8, 0.8, 0.9, 0.9)))]
    out = crop(clip_arrays(original), (0.25, 0.25, 0.75, 0.75), regions)
    assert out.regions[0].frame_indices == (0,), "the frame-1 box lies outside the window: dropped there"
    assert out.regions[0].boxes[0] == pytest.approx((0.0, 0.0, 0.5, 0.5))
    frames = np.zeros((FRAMES, 48, 64, 3), np.uint8)
    arrays = {**clip_arrays(original), "frames": frames}
    config = AugmentConfig(hflip_prob=0.5, crop_prob=0.5)
    a = augment(arrays, regions, config, np.random.default_rng(5))
    b = augment(arrays, regions, config, np.random.default_rng(5))
    assert a.valid == b.valid and a.regions == b.regions
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
        assert a.arrays[name].shape == arrays[name].shape, "crops are resized back to the stored sizes"
