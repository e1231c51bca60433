"""Deterministic renderer of a tiny synthetic video world.

Why: to measure a video editor we need clips whose edit ground truth is known. Because we render
them, ``render(scene.replace(colour="blue"))`` is exactly the clip the editor should produce for
"red ball" -> "blue ball": same motion, same background, same masks.

A clip is one flat-coloured object (ball, square, triangle, star) moving along a path (slide,
bounce, circle) over a static background (green grass, sand, water, snow, gray road).
Frames are RGB float in 0..1, shaped [F, H, W, 3] (ComfyUI's IMAGE layout). The object is
anti-aliased by supersampling; ``masks`` are exactly the pixels whose object coverage is > 0.5.
Everything is a pure function of the ``Scene`` (motion from ``seed``, texture from ``seed`` and
background), so changing the colour or shape keeps the motion and background bit-identical, and
changing the background keeps the motion.
"""

from __future__ import annotations

import colorsys
import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Saturated, bright object colours with hues far apart (about 55..105 degrees between neighbours),
# and all far (>= 0.3 RGB distance) from every background so objects can be segmented.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.65, 0.15, 0.90),
}

SHAPES: tuple[str, ...] = ("ball", "square", "triangle", "star")

PATHS: dict[str, str] = {"slide": "sliding", "bounce": "bouncing", "circle": "circling"}

# name -> (base colour, second colour for stripes or None, low-freq noise amplitude, kind)
BACKGROUNDS: dict[str, tuple[tuple[float, float, float], Optional[tuple[float, float, float]], float, str]] = {
    "green grass": ((0.22, 0.45, 0.15), None, 0.07, "grass"),
    "sand": ((0.84, 0.74, 0.52), None, 0.05, "noise"),
    "water": ((0.16, 0.40, 0.62), (0.26, 0.54, 0.74), 0.02, "stripes"),
    "snow": ((0.93, 0.95, 0.98), None, 0.025, "noise"),
    "gray road": ((0.42, 0.42, 0.44), None, 0.0, "plain"),
}

_SUPERSAMPLE = 4


def colour_hue(rgb) -> float:
    """Hue in degrees [0, 360) of an RGB triple in 0..1."""
    h, _, _ = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
    return h * 360.0


@dataclass(frozen=True)
class Scene:
    """Everything that determines a clip. ``size`` is the object's half-extent as a fraction of the
    frame width; ``resolution`` is the (square) frame side in pixels."""

    shape: str = "ball"
    colour: str = "red"
    background: str = "green grass"
    path: str = "bounce"
    size: float = 0.2
    seed: int = 0
    frames: int = 8
    resolution: int = 64

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"Scene.shape must be one of {SHAPES}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"Scene.colour must be one of {tuple(COLOURS)}, got {self.colour!r}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Scene.background must be one of {tuple(BACKGROUNDS)}, got {self.background!r}")
        if self.path not in PATHS:
            raise ValueError(f"Scene.path must be one of {tuple(PATHS)}, got {self.path!r}")
        if not (0.03 <= self.size <= 0.3):
            raise ValueError(f"Scene.size must be in [0.03, 0.3] (fraction of the frame width), got {self.size}")
        if self.frames < 1 or self.resolution < 8:
            raise ValueError(f"Scene.frames must be >= 1 and resolution >= 8, got {self.frames}, {self.resolution}")

    def replace(self, **changes) -> "Scene":
        """Same scene with some fields changed (e.g. colour="blue"): the edit ground truth."""
        return dataclasses.replace(self, **changes)

    @property
    def caption(self) -> str:
        return caption(self)


def caption(scene: Scene, verb: bool = True) -> str:
    """Short prompt: 'a red ball bouncing on green grass' (or without the verb)."""
    if verb:
        return f"a {scene.colour} {scene.shape} {PATHS[scene.path]} on {scene.background}"
    return f"a {scene.colour} {scene.shape} on {scene.background}"


@dataclass
class Clip:
    """A rendered clip: frames [F,H,W,3] float32 0..1, masks [F,H,W] bool, coverage [F,H,W] float32."""

    frames: torch.Tensor
    masks: torch.Tensor
    caption: str
    scene: Scene
    coverage: torch.Tensor

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.frames.numpy(), self.masks.numpy()


# ----------------------------------------------------------------------------------------------
# geometry


def _polygon_inside(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        cond = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x2 - x1) * (py - y1) / (y2 - y1) + x1
        inside ^= cond & (px < xint)
    return inside


_TRIANGLE = np.array([[0.0, -1.05], [1.05, 0.85], [-1.05, 0.85]])
_STAR = np.array(
    [
        (r * np.sin(a), -r * np.cos(a) + 0.08)
        for k in range(10)
        for a, r in [(np.pi * k / 5, 1.15 if k % 2 == 0 else 0.5)]
    ]
)


def shape_inside(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Whether points (in units of the object's half-extent, y down) lie inside the shape."""
    if shape == "ball":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    if shape == "triangle":
        return _polygon_inside(dx, dy, _TRIANGLE)
    if shape == "star":
        return _polygon_inside(dx, dy, _STAR)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_coverage(shape: str, cx: float, cy: float, half: float, resolution: int) -> np.ndarray:
    """Anti-aliased coverage [H,W] in 0..1 of a shape centred at (cx, cy) pixels."""
    ss = _SUPERSAMPLE
    sub = (np.arange(resolution * ss) + 0.5) / ss  # sample positions in pixel units
    # only evaluate inside the bounding box for speed
    lo_x, hi_x = int(max(0, np.floor(cx - 1.3 * half - 1))), int(min(resolution, np.ceil(cx + 1.3 * half + 1)))
    lo_y, hi_y = int(max(0, np.floor(cy - 1.3 * half - 1))), int(min(resolution, np.ceil(cy + 1.3 * half + 1)))
    cov = np.zeros((resolution, resolution), dtype=np.float64)
    if hi_x <= lo_x or hi_y <= lo_y:
        return cov
    xs = sub[lo_x * ss : hi_x * ss]
    ys = sub[lo_y * ss : hi_y * ss]
    gx, gy = np.meshgrid((xs - cx) / half, (ys - cy) / half)
    inside = shape_inside(shape, gx, gy).astype(np.float64)
    h, w = hi_y - lo_y, hi_x - lo_x
    cov[lo_y:hi_y, lo_x:hi_x] = inside.reshape(h, ss, w, ss).mean(axis=(1, 3))
    return cov


# ----------------------------------------------------------------------------------------------
# motion


def trajectory(scene: Scene) -> np.ndarray:
    """Object centres [F, 2] (x, y) in pixels. Depends only on path, seed, size, frames, resolution."""
    rng = np.random.default_rng([int(scene.seed), 3])
    res = float(scene.resolution)
    half = scene.size * res
    margin = half * 1.15 + 1.0
    lo, hi = margin, res - margin
    f = scene.frames
    u = np.arange(f) / max(f - 1, 1)
    # draw every parameter in a fixed order regardless of path so streams never shift
    direction = 1.0 if rng.random() < 0.5 else -1.0
    span = rng.uniform(0.35, 0.6) * (hi - lo)
    start = rng.uniform(lo, hi - span)
    y_level = rng.uniform(lo, hi)
    bounces = int(rng.integers(1, 3))
    phase = rng.uniform(0.0, np.pi)
    height = rng.uniform(0.4, 0.8) * (hi - lo)
    radius = rng.uniform(0.25, 0.45) * (hi - lo)
    theta0 = rng.uniform(0.0, 2 * np.pi)
    turn = rng.uniform(0.6, 0.9)
    if direction < 0:
        xs = start + span * (1 - u)
    else:
        xs = start + span * u
    if scene.path == "slide":
        ys = np.full(f, y_level)
    elif scene.path == "bounce":
        ys = hi - np.abs(np.sin(np.pi * bounces * u + phase)) * height
    elif scene.path == "circle":
        c = (lo + hi) / 2
        ang = theta0 + direction * 2 * np.pi * turn * u
        xs = c + radius * np.cos(ang)
        ys = c + radius * np.sin(ang)
    else:  # pragma: no cover - validated in Scene
        raise ValueError(scene.path)
    return np.stack([xs, ys], axis=1)


# ----------------------------------------------------------------------------------------------
# backgrounds


def _value_noise(rng: np.random.Generator, cells: int, resolution: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random (cells+1)^2 grid, bilinearly upsampled. Low frequency on
    purpose, so a 4x-downsampling VAE can reproduce it."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    t = (np.arange(resolution) + 0.5) / resolution * cells
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    fr = t - i0
    fr = fr * fr * (3 - 2 * fr)  # smoothstep
    a = grid[i0][:, i0] * (1 - fr)[None, :] + grid[i0][:, i0 + 1] * fr[None, :]
    b = grid[i0 + 1][:, i0] * (1 - fr)[None, :] + grid[i0 + 1][:, i0 + 1] * fr[None, :]
    return a * (1 - fr)[:, None] + b * fr[:, None]


def render_background(scene: Scene) -> np.ndarray:
    """Static background plate [H, W, 3] float64. Depends only on background, seed and resolution."""
    base, second, amp, kind = BACKGROUNDS[scene.background]
    bg_index = list(BACKGROUNDS).index(scene.background)
    rng = np.random.default_rng([int(scene.seed), 7, bg_index])
    res = scene.resolution
    img = np.empty((res, res, 3), dtype=np.float64)
    img[:] = np.asarray(base)
    if kind == "grass":
        n = 0.7 * _value_noise(rng, 3, res) + 0.3 * _value_noise(rng, 8, res)
        img += amp * n[..., None] * np.array([0.6, 1.0, 0.5])
    elif kind == "noise":
        n = 0.7 * _value_noise(rng, 3, res) + 0.3 * _value_noise(rng, 6, res)
        img += amp * n[..., None]
    elif kind == "stripes":
        period = rng.uniform(0.18, 0.26) * res
        wob_amp = rng.uniform(0.02, 0.05) * res
        wob_phase = rng.uniform(0, 2 * np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
        wave = np.sin(2 * np.pi * (yy + wob_amp * np.sin(2 * np.pi * xx / res * 1.5 + wob_phase)) / period + phase)
        t = 0.5 + 0.5 * wave
        img = (1 - t)[..., None] * np.asarray(base) + t[..., None] * np.asarray(second)
        img += amp * _value_noise(rng, 3, res)[..., None]
    elif kind == "plain":
        pass
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------


def render(scene: Scene) -> Clip:
    """Render a clip. Pure function of ``scene``: identical scenes give bit-identical clips."""
    res = scene.resolution
    bg = render_background(scene)
    obj = np.asarray(COLOURS[scene.colour], dtype=np.float64)
    centres = trajectory(scene)
    half = scene.size * res
    cov = np.stack([shape_coverage(scene.shape, cx, cy, half, res) for cx, cy in centres])
    frames = cov[..., None] * obj + (1.0 - cov[..., None]) * bg[None]
    masks = cov > 0.5
    return Clip(
        frames=torch.from_numpy(frames.astype(np.float32)),
        masks=torch.from_numpy(masks),
        caption=caption(scene),
        scene=scene,
        coverage=torch.from_numpy(cov.astype(np.float32)),
    )


def random_scene(rng: np.random.Generator, frames: int = 8, resolution: int = 64) -> Scene:
    """A random scene (uniform over shape, colour, background, path; size and seed random)."""
    return Scene(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        background=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        path=list(PATHS)[int(rng.integers(len(PATHS)))],
        size=float(rng.uniform(0.16, 0.23)),
        seed=int(rng.integers(0, 2**31 - 1)),
        frames=frames,
        resolution=resolution,
    )
