"""A synthetic 4D scene sampled from a seed: a textured room, a moving camera, a few moving objects.

World frame: z up, the floor is the plane z = 0, the room spans [-half_x, half_x] x [-half_y, half_y]
x [0, height]. Objects rest on the floor and translate (never rotate), with constant acceleration:
p(t) = p0 + v0 t + a t^2 / 2, t in seconds from the first frame. Because nothing rotates and lighting
is a fixed directional light, a surface point keeps its colour over time: rendered frames are
photometrically consistent along the true flow.

Sampling rejects configurations that would make the ground truth awkward: objects that touch each
other, the walls or the camera, and objects whose centre leaves the central part of the first and last
view (the questions are about them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import geometry

# Object colours are saturated and distinct from the muted room colours, so marks are unambiguous.
OBJECT_PALETTE = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.20, 0.70, 0.25),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.92, 0.80, 0.15),
    "purple": (0.55, 0.25, 0.75),
    "orange": (0.95, 0.50, 0.10),
    "cyan": (0.15, 0.75, 0.80),
    "white": (0.92, 0.92, 0.90),
}
OBJECT_KINDS = ("sphere", "box")
# Room faces in the order of their surface ids (render.py); the normal points into the room.
ROOM_FACES = ("floor", "ceiling", "wall_-x", "wall_+x", "wall_-y", "wall_+y")

_MAX_ATTEMPTS = 200
_WALL_MARGIN = 0.3  # metres between any object / the camera and a wall
_OBJECT_GAP = 0.15  # metres between the bounding spheres of two objects
_CAMERA_CLEARANCE = 0.6  # metres between the camera and an object's bounding sphere
_MAX_TRAVEL = 3.5  # metres an object may cover at top speed (or by top acceleration) in one clip
_VIEW_FRACTION = 0.8  # object centres stay within this fraction of the half field of view


@dataclass(frozen=True)
class Texture:
    """A soft 3-D checker between two albedos: 0.5 + 0.5 tanh(sharpness * prod_a sin(f_a x_a + phi_a)).

    Evaluated on points in the surface's own frame (world for the room, object-local for objects).
    A zero frequency with phase pi/2 makes an axis constant, which is how a plane gets a 2-D pattern.
    The edges are soft so that one ray per pixel does not alias and H.264 keeps the detail.
    """

    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    frequencies: tuple[float, float, float]
    phases: tuple[float, float, float]
    sharpness: float

    def albedo(self, points: np.ndarray) -> np.ndarray:
        """[3, P] points -> [3, P] linear albedo in [0, 1] (components first, like the renderer)."""
        waves = np.sin(points * np.asarray(self.frequencies)[:, None] + np.asarray(self.phases)[:, None])
        mix = 0.5 + 0.5 * np.tanh(self.sharpness * (waves[0] * waves[1] * waves[2]))
        colour_a, colour_b = np.asarray(self.colour_a)[:, None], np.asarray(self.colour_b)[:, None]
        return colour_a + mix * (colour_b - colour_a)


@dataclass(frozen=True)
class Room:
    half_x: float
    half_y: float
    height: float
    textures: tuple[Texture, ...]  # one per ROOM_FACES entry


@dataclass(frozen=True)
class SceneObject:
    """A sphere or a yawed box resting on the floor. size = full extents along its local axes (m)."""

    kind: str
    colour_name: str
    size: tuple[float, float, float]
    yaw: float  # rotation about world z, radians (boxes; 0 for spheres)
    p0: tuple[float, float, float]
    v0: tuple[float, float, float]
    accel: tuple[float, float, float]
    texture: Texture

    @property
    def moving(self) -> bool:
        return bool(np.any(np.asarray(self.v0) != 0.0) or np.any(np.asarray(self.accel) != 0.0))

    @property
    def label(self) -> str:
        return f"{self.colour_name} {self.kind}"

    @property
    def bounding_radius(self) -> float:
        return 0.5 * float(np.linalg.norm(self.size)) if self.kind == "box" else 0.5 * self.size[0]

    def position(self, t: np.ndarray) -> np.ndarray:
        """Centre at times t [N] -> [N, 3]."""
        t = np.asarray(t, dtype=np.float64)[:, None]
        return np.asarray(self.p0) + np.asarray(self.v0) * t + 0.5 * np.asarray(self.accel) * t**2

    def velocity(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)[:, None]
        return np.asarray(self.v0) + np.asarray(self.accel) * t

    def rotation(self) -> np.ndarray:
        """Object-local to world rotation (about z by yaw)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CameraPath:
    """The eye moves on a slow arc around the room centre, bobbing in height; it looks at a drifting
    target near the floor. Small, smooth motion keeps flows at a few pixels per frame."""

    radius: float
    radial_speed: float  # m/s
    angle0: float
    angular_speed: float  # rad/s
    height: float
    bob_amplitude: float
    bob_period: float  # s
    target0: tuple[float, float, float]
    target_velocity: tuple[float, float, float]

    def eye(self, t: float) -> np.ndarray:
        radius = self.radius + self.radial_speed * t
        angle = self.angle0 + self.angular_speed * t
        height = self.height + self.bob_amplitude * np.sin(2.0 * np.pi * t / self.bob_period)
        return np.array([radius * np.cos(angle), radius * np.sin(angle), height])

    def pose(self, t: float) -> np.ndarray:
        target = np.asarray(self.target0) + np.asarray(self.target_velocity) * t
        return geometry.look_at(self.eye(t), target)


@dataclass(frozen=True)
class Scene:
    image_size: tuple[int, int]  # (H, W)
    num_frames: int
    fps: float
    fov_x_deg: float
    room: Room
    camera: CameraPath
    objects: tuple[SceneObject, ...]
    light_direction: tuple[float, float, float]  # unit vector towards the light

    @property
    def timestamps(self) -> np.ndarray:
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    @property
    def K(self) -> np.ndarray:
        return geometry.intrinsics_from_fov(self.image_size, self.fov_x_deg)

    def cam_to_world(self) -> np.ndarray:
        """[N, 4, 4] poses at the frame times."""
        return np.stack([self.camera.pose(t) for t in self.timestamps])


def _plane_texture(rng: np.random.Generator, constant_axis: int, base: np.ndarray) -> Texture:
    scale = rng.uniform(0.4, 0.9)  # metres per checker square
    frequencies = [np.pi / scale, np.pi / (scale * rng.uniform(0.7, 1.5)), np.pi / scale]
    phases = list(rng.uniform(0.0, 2.0 * np.pi, 3))
    frequencies[constant_axis] = 0.0
    phases[constant_axis] = np.pi / 2.0
    shade = rng.uniform(0.55, 0.8)
    return Texture(
        colour_a=tuple(base), colour_b=tuple(base * shade), frequencies=tuple(frequencies),
        phases=tuple(phases), sharpness=float(rng.uniform(2.0, 4.0)),
    )


def _sample_room(rng: np.random.Generator) -> Room:
    # Muted earth and grey tones: the objects must stand out from the background.
    floor_base = rng.uniform([0.45, 0.35, 0.25], [0.7, 0.6, 0.5])
    wall_base = rng.uniform([0.55, 0.55, 0.5], [0.8, 0.8, 0.75])
    ceiling_base = rng.uniform([0.75, 0.75, 0.75], [0.9, 0.9, 0.9])
    constant_axes = (2, 2, 0, 0, 1, 1)
    bases = (floor_base, ceiling_base, wall_base, wall_base * 0.95, wall_base * 0.9, wall_base * 0.85)
    return Room(
        half_x=float(rng.uniform(5.5, 7.5)),
        half_y=float(rng.uniform(5.5, 7.5)),
        height=float(rng.uniform(3.0, 4.0)),
        textures=tuple(_plane_texture(rng, axis, base) for axis, base in zip(constant_axes, bases)),
    )


def _sample_camera(rng: np.random.Generator) -> CameraPath:
    return CameraPath(
        radius=float(rng.uniform(3.5, 4.2)),
        radial_speed=float(rng.uniform(-0.1, 0.1)),
        angle0=float(rng.uniform(0.0, 2.0 * np.pi)),
        angular_speed=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.12)),
        height=float(rng.uniform(1.3, 1.9)),
        bob_amplitude=float(rng.uniform(0.0, 0.1)),
        bob_period=float(rng.uniform(2.0, 5.0)),
        target0=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)), float(rng.uniform(0.2, 0.5))),
        target_velocity=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05)), 0.0),
    )


def _sample_object(rng: np.random.Generator, colour_name: str, heading: float | None, duration: float) -> SceneObject:
    """heading: the world azimuth the object starts moving towards (+- 35 degrees); None: static.
    Long clips get slower objects, so that they can stay in the room and in view."""
    kind = OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))]
    if kind == "sphere":
        radius = rng.uniform(0.2, 0.45)
        size = (2.0 * radius,) * 3
        yaw = 0.0
    else:
        size = tuple(rng.uniform(0.3, 0.8, 3))
        yaw = rng.uniform(0.0, np.pi)
    centre_distance = rng.uniform(0.0, 2.0)
    centre_angle = rng.uniform(0.0, 2.0 * np.pi)
    p0 = (centre_distance * np.cos(centre_angle), centre_distance * np.sin(centre_angle), 0.5 * size[2])
    if heading is not None:
        top_speed = min(1.2, _MAX_TRAVEL / duration)
        speed, heading = rng.uniform(top_speed / 6.0, top_speed), heading + np.radians(rng.uniform(-35.0, 35.0))
        v0 = (speed * np.cos(heading), speed * np.sin(heading), 0.0)
        # Half the moving objects accelerate, so speed and displacement differ from v0 * duration.
        accelerating = rng.random() < 0.5
        top_accel = min(0.6, _MAX_TRAVEL / duration**2)
        magnitude, direction = rng.uniform(top_accel / 6.0, top_accel), rng.uniform(0.0, 2.0 * np.pi)
        accel = (magnitude * np.cos(direction), magnitude * np.sin(direction), 0.0) if accelerating else (0.0,) * 3
    else:
        v0, accel = (0.0,) * 3, (0.0,) * 3
    base = np.asarray(OBJECT_PALETTE[colour_name])
    texture = Texture(
        colour_a=tuple(base), colour_b=tuple(base * rng.uniform(0.45, 0.7)),
        frequencies=tuple(np.pi / rng.uniform(0.2, 0.35, 3)), phases=tuple(rng.uniform(0.0, 2.0 * np.pi, 3)),
        sharpness=float(rng.uniform(2.0, 4.0)),
    )
    return SceneObject(
        kind=kind, colour_name=colour_name, size=tuple(float(s) for s in size), yaw=float(yaw),
        p0=tuple(float(p) for p in p0), v0=tuple(float(v) for v in v0), accel=tuple(float(a) for a in accel),
        texture=texture,
    )


def _fits(
    candidate: SceneObject, placed: list[SceneObject], room: Room, eyes: np.ndarray, poses: np.ndarray,
    times: np.ndarray, half_tan: np.ndarray,
) -> bool:
    centres = candidate.position(times)
    radius = candidate.bounding_radius
    if np.any(np.abs(centres[:, 0]) > room.half_x - _WALL_MARGIN - radius):
        return False
    if np.any(np.abs(centres[:, 1]) > room.half_y - _WALL_MARGIN - radius):
        return False
    if np.any(np.linalg.norm(centres - eyes, axis=1) < radius + _CAMERA_CLEARANCE):
        return False
    for other in placed:
        gap = np.linalg.norm(centres - other.position(times), axis=1)
        if np.any(gap < radius + other.bounding_radius + _OBJECT_GAP):
            return False
    for frame in (0, len(times) - 1):
        world_to_cam = geometry.invert_pose(poses[frame])
        cam = world_to_cam[:3, :3] @ centres[frame] + world_to_cam[:3, 3]
        if cam[2] <= radius + _CAMERA_CLEARANCE:
            return False
        if np.any(np.abs(cam[:2] / cam[2]) > _VIEW_FRACTION * half_tan):
            return False
    return True


def sample_scene(
    seed: int | np.random.SeedSequence, image_size: tuple[int, int], num_frames: int, fps: float,
    static_probability: float | None = None,
) -> Scene:
    """A scene for a clip of num_frames at fps and image_size (H, W); the same seed gives the same scene.

    static_probability None: the training set's rule (one static object in some scenes of 3+ objects).
    A number p: each object is static with probability p, and at least one object moves; the benchmark
    asks this so that false-premise and counting questions have static objects often enough. Either
    way the random draws of the None rule are left exactly as they were, so existing seeds keep
    generating the same scenes.
    """
    if num_frames < 2:
        raise ValueError(f"a scene needs at least 2 frames (flow, motion), got {num_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if static_probability is not None and not 0.0 <= static_probability <= 1.0:
        raise ValueError(f"static_probability must be in [0, 1], got {static_probability}")
    rng = np.random.default_rng(seed)
    room = _sample_room(rng)
    times = np.arange(num_frames, dtype=np.float64) / fps
    for _ in range(_MAX_ATTEMPTS):
        camera = _sample_camera(rng)
        eyes = np.stack([camera.eye(t) for t in times])
        if np.all(np.abs(eyes[:, 0]) < room.half_x - _WALL_MARGIN) and np.all(
            np.abs(eyes[:, 1]) < room.half_y - _WALL_MARGIN
        ):
            break
    else:
        raise RuntimeError(f"the camera leaves the room within {num_frames} frames at {fps} fps: clip too long")
    fov_x_deg = float(rng.uniform(55.0, 70.0))
    height, width = image_size
    half_tan_x = np.tan(np.radians(fov_x_deg) / 2.0)
    half_tan = np.array([half_tan_x, half_tan_x * height / width])
    poses = np.stack([camera.pose(t) for t in times])
    num_objects = int(rng.integers(2, 5))
    if static_probability is None:
        # A static object in some scenes gives the motion questions a true "it does not move" case.
        static_index = int(rng.integers(num_objects)) if num_objects >= 3 and rng.random() < 0.4 else -1
        static = np.arange(num_objects) == static_index
    else:
        static = rng.random(num_objects) < static_probability
        if static.all():
            static[int(rng.integers(num_objects))] = False
    colours = rng.permutation(list(OBJECT_PALETTE))[:num_objects]
    # Each moving object first draws the way it goes as seen by the first camera (right, left, away,
    # toward), uniformly: drawing the heading uniformly in the world instead, the objects that stay in
    # view are mostly those moving away, and direction questions would be biased.
    right, forward = poses[0, :2, 0], poses[0, :2, 2]
    view_headings = [np.arctan2(v[1], v[0]) for v in (right, -right, forward, -forward)]
    objects: list[SceneObject] = []
    for index, colour in enumerate(colours):
        heading = None if static[index] else view_headings[int(rng.integers(4))]
        for _ in range(_MAX_ATTEMPTS):
            candidate = _sample_object(rng, str(colour), heading, duration=times[-1])
            if _fits(candidate, objects, room, eyes, poses, times, half_tan):
                objects.append(candidate)
                break
    if len(objects) < 2:
        raise RuntimeError(
            f"could not place 2 objects in {_MAX_ATTEMPTS} attempts each: {num_frames} frames at {fps} fps "
            "is too long for objects to stay in view"
        )
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])
    return Scene(
        image_size=(int(height), int(width)),
        num_frames=int(num_frames),
        fps=float(fps),
        fov_x_deg=fov_x_deg,
        room=room,
        camera=camera,
        objects=tuple(objects),
        light_direction=tuple(light / np.linalg.norm(light)),
    )
