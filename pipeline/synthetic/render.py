"""Vectorized ray casting of a synthetic scene: rgb frames and their exact ground truth.

One ray per pixel centre, all pixels of a frame at once. Every ray starts inside the closed room, so
every pixel hits something and depth is always finite. Flow is computed from the exact float64 hit
point, not from the stored depth, so it is exact up to float32 storage.

Per-pixel vectors are kept components-first ([3, P]) and combined with einsum / elementwise products
rather than matmul: a [P, 3] @ [3, 3] product goes to multi-threaded OpenBLAS, whose spinning threads
made rendering 3-5x slower on a shared 2-core machine, while these loops run in one thread at the same
speed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import geometry
from pipeline.synthetic.ground_truth import SceneGroundTruth
from pipeline.synthetic.scene import ROOM_FACES, Scene, SceneObject

_NUM_FACES = len(ROOM_FACES)  # surface ids: room faces first, then object k at _NUM_FACES + k
_FACE_NORMALS = np.array(
    [[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64
).T
_AMBIENT = 0.45
_DIFFUSE = 0.55
_MIN_HIT = 1e-6  # metres: ignore self-intersections at the ray origin


def _rotate(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """[3, 3] x [3, P] -> [3, P]"""
    return np.einsum("ij,jp->ip", matrix, vectors)


def _dot(vector: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """[3] . [3, P] -> [P]"""
    return vector[0] * vectors[0] + vector[1] * vectors[1] + vector[2] * vectors[2]


@dataclass(frozen=True)
class _Hits:
    distance: np.ndarray  # [P] along the unit ray
    surface: np.ndarray  # [P] surface id
    points: np.ndarray  # [3, P] world
    normals: np.ndarray  # [3, P] world, unit


def _room_hits(scene: Scene, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance and face id of rays starting inside the room box."""
    room = scene.room
    low = np.array([-room.half_x, -room.half_y, 0.0])[:, None]
    high = np.array([room.half_x, room.half_y, room.height])[:, None]
    positive = directions > 0
    with np.errstate(divide="ignore"):
        per_axis = (np.where(positive, high, low) - origin[:, None]) / directions
    # A zero component divides a negative gap by 0 (-inf): that axis is never the exit.
    per_axis[directions == 0] = np.inf
    axis = np.argmin(per_axis, axis=0)
    columns = np.arange(len(axis))
    # Face ids: axis x -> 2 (-x) / 3 (+x), y -> 4 / 5, z -> 0 (floor) / 1 (ceiling).
    face = np.array([2, 4, 0])[axis] + positive[axis, columns]
    return per_axis[axis, columns], face


def _sphere_hits(radius: float, centre: np.ndarray, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    offset = origin - centre
    half_b = _dot(offset, directions)
    discriminant = half_b**2 - (offset @ offset - radius**2)
    with np.errstate(invalid="ignore"):
        distance = -half_b - np.sqrt(discriminant)
    return np.where((discriminant > 0) & (distance > _MIN_HIT), distance, np.inf)


def _box_hits(obj: SceneObject, centre: np.ndarray, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Slab test in the box's own frame (the camera is never inside a box), run only on the rays that
    hit its bounding sphere: a box covers a small part of the image."""
    distance = np.full(directions.shape[1], np.inf)
    candidates = np.flatnonzero(np.isfinite(_sphere_hits(obj.bounding_radius, centre, origin, directions)))
    rotation = obj.rotation()
    half = 0.5 * np.asarray(obj.size)[:, None]
    local_origin = (rotation.T @ (origin - centre))[:, None]
    local_dirs = _rotate(rotation.T, directions[:, candidates])
    with np.errstate(divide="ignore", invalid="ignore"):
        near = (-half - local_origin) / local_dirs
        far = (half - local_origin) / local_dirs
    # fmax / fmin skip the NaN of a ray parallel to a slab it grazes.
    entering = np.fmin(near, far)
    leaving = np.fmax(near, far)
    entry = np.fmax(np.fmax(entering[0], entering[1]), entering[2])
    leave = np.fmin(np.fmin(leaving[0], leaving[1]), leaving[2])
    distance[candidates] = np.where((entry <= leave) & (entry > _MIN_HIT), entry, np.inf)
    return distance


def _object_normals(obj: SceneObject, centre: np.ndarray, points: np.ndarray) -> np.ndarray:
    if obj.kind == "sphere":
        return (points - centre[:, None]) / (0.5 * obj.size[0])
    rotation = obj.rotation()
    # The face hit is the one whose slab the point lies on: the largest |local| / half extent.
    relative = _rotate(rotation.T, points - centre[:, None]) / (0.5 * np.asarray(obj.size)[:, None])
    axis = np.argmax(np.abs(relative), axis=0)
    columns = np.arange(len(axis))
    normals = np.zeros_like(relative)
    normals[axis, columns] = np.sign(relative[axis, columns])
    return _rotate(rotation, normals)


def _cast(scene: Scene, centres: np.ndarray, origin: np.ndarray, directions: np.ndarray) -> _Hits:
    """First hits of rays [3, P] from one origin, objects at world centres [K, 3]."""
    distance, surface = _room_hits(scene, origin, directions)
    for index, obj in enumerate(scene.objects):
        if obj.kind == "sphere":
            object_distance = _sphere_hits(0.5 * obj.size[0], centres[index], origin, directions)
        else:
            object_distance = _box_hits(obj, centres[index], origin, directions)
        closer = object_distance < distance
        distance = np.where(closer, object_distance, distance)
        surface = np.where(closer, _NUM_FACES + index, surface)
    points = origin[:, None] + distance * directions
    normals = _FACE_NORMALS[:, np.minimum(surface, _NUM_FACES - 1)]
    for index, obj in enumerate(scene.objects):
        selected = surface == _NUM_FACES + index
        normals[:, selected] = _object_normals(obj, centres[index], points[:, selected])
    return _Hits(distance=distance, surface=surface, points=points, normals=normals)


def _shade(scene: Scene, hits: _Hits, centres: np.ndarray) -> np.ndarray:
    """Lambertian colour [3, P] in [0, 1]; texture lives on the surface, so it moves with it."""
    albedo = np.empty_like(hits.points)
    for face, texture in enumerate(scene.room.textures):
        selected = hits.surface == face
        albedo[:, selected] = texture.albedo(hits.points[:, selected])
    for index, obj in enumerate(scene.objects):
        selected = hits.surface == _NUM_FACES + index
        local = _rotate(obj.rotation().T, hits.points[:, selected] - centres[index][:, None])
        albedo[:, selected] = obj.texture.albedo(local)
    lambert = np.clip(_dot(np.asarray(scene.light_direction), hits.normals), 0.0, None)
    return np.clip(albedo * (_AMBIENT + _DIFFUSE * lambert), 0.0, 1.0)


def _project(K: np.ndarray, cam_to_world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World points [3, P] -> pixel coordinates [2, P] (geometry.project_points, components first)."""
    camera = _rotate(cam_to_world[:3, :3].T, points - cam_to_world[:3, 3, None])
    pixels = _rotate(K, camera)
    return pixels[:2] / pixels[2]


def render(scene: Scene) -> tuple[np.ndarray, SceneGroundTruth]:
    """All frames of a scene: (rgb [N, H, W, 3] uint8, its ground truth)."""
    height, width = scene.image_size
    times = scene.timestamps
    K = scene.K
    poses = scene.cam_to_world()
    positions = np.stack([obj.position(times) for obj in scene.objects], axis=1)
    velocities = np.stack([obj.velocity(times) for obj in scene.objects], axis=1)
    uv = geometry.pixel_centers(scene.image_size).reshape(-1, 2).T
    camera_rays = _rotate(np.linalg.inv(K), np.vstack([uv, np.ones((1, uv.shape[1]))]))
    # z-depth = distance along the unit ray / |K^-1 (u, v, 1)|, the same for every pose.
    ray_lengths = np.sqrt((camera_rays**2).sum(axis=0))
    camera_directions = camera_rays / ray_lengths
    moving = np.array([obj.moving for obj in scene.objects])

    n = scene.num_frames
    rgb = np.empty((n, height, width, 3), dtype=np.uint8)
    depth = np.empty((n, height, width), dtype=np.float32)
    flow = np.zeros((n, 2, height, width), dtype=np.float32)
    object_ids = np.empty((n, height, width), dtype=np.int16)
    for frame in range(n):
        origin = poses[frame, :3, 3]
        hits = _cast(scene, positions[frame], origin, _rotate(poses[frame, :3, :3], camera_directions))
        colour = _shade(scene, hits, positions[frame])
        rgb[frame] = np.round(colour.T * 255.0).astype(np.uint8).reshape(height, width, 3)
        depth[frame] = (hits.distance / ray_lengths).reshape(height, width)
        ids = np.where(hits.surface >= _NUM_FACES, hits.surface - _NUM_FACES, -1)
        object_ids[frame] = ids.reshape(height, width)
        if frame > 0:
            # A point on object k was displaced by k's own motion since the previous frame; the appended
            # zero column is what background pixels (id -1) index.
            steps = np.hstack([(positions[frame] - positions[frame - 1]).T, np.zeros((3, 1))])
            previous_uv = _project(K, poses[frame - 1], hits.points - steps[:, ids])
            flow[frame] = (previous_uv - uv).reshape(2, height, width)
    ground_truth = SceneGroundTruth(
        fps=scene.fps,
        timestamps=times,
        K=K,
        cam_to_world=poses,
        depth=depth,
        flow=flow,
        dyn_mask=((object_ids >= 0) & moving[np.maximum(object_ids, 0)]).astype(np.uint8),
        object_ids=object_ids,
        object_positions=positions,
        object_velocities=velocities,
        object_sizes=np.array([obj.size for obj in scene.objects], dtype=np.float64),
        object_yaws=np.array([obj.yaw for obj in scene.objects], dtype=np.float64),
        object_kinds=np.array([obj.kind for obj in scene.objects]),
        object_labels=np.array([obj.label for obj in scene.objects]),
        object_moving=moving,
    )
    return rgb, ground_truth
