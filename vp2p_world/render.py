"""Deterministic renderer of a tiny synthetic video world.

Why: to measure a video editor we need clips whose edit ground truth is known. Because we render
them, ``render(scene.replace(colour="blue"))`` is exactly the clip the editor should produce for
"red ball" -> "blue ball": same motion, same background, same masks.

A clip is one flat-coloured object (ball, square, triangle, star) moving along a path (slide,
bounce, circle) over a background (green grass, sand, water, snow, gray road).
Frames are RGB float in 0..1, shaped [F, H, W, 3] (ComfyUI's IMAGE layout). The object is
anti-aliased by supersampling; ``masks`` are exactly the pixels whose visible object coverage is > 0.5.
Everything is a pure function of the ``Scene`` (motion from ``seed``, texture from ``seed`` and
background), so changing the colour or shape keeps the motion and background bit-identical, and
changing the background keeps the motion.

By default the background is static and evenly lit, and frames differ only by where the object is. A
``Scene`` can also make the world move (each option off by default, and a default scene renders
bit-identically to the world before these options existed):

- ``camera``: "pan", "zoom" or "pan+zoom". The background is a function over a world larger than the
  frame, evaluated at each frame's pixel centres (no resampling); the camera follows the object, whose
  path stays in frame coordinates.
- ``lighting``: "drift" (brightness and colour of the light change linearly over the clip) or "flicker"
  (drift plus a per-frame brightness jitter). Light is a per-frame RGB gain <= 1 on the whole frame,
  known exactly: ``lighting_gains(scene)``.
- ``growth``: the object's size at the last frame as a multiple of ``size`` (linear in time).
- ``occluder``: a dark post in the foreground that crosses the object mid-clip; the object's mask
  excludes the pixels it hides, and an edit's truth keeps it.
- ``texture``: finer detail on every background, so that keeping the background is a real test.

The known motion between frames t and t+1 is exact: ``Clip.flow(t)`` says, for every pixel of frame t+1,
where the same point of its layer (background, object, occluder) is in frame t; ``Clip.warp`` applies it
(and the known change of light); ``Clip.valid`` marks the pixels where that warp is exact.
"""

from __future__ import annotations

import colorsys
import dataclasses
import logging
from dataclasses import dataclass
from functools import cached_property
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

# Finer detail with ``Scene.texture``: name -> (amplitude, RGB tint, offset). Value noise of two octaves
# (cells of 1/5 and 1/10 of the frame) times the amplitude, plus the offset (snow only darkens, so it never
# clips at white). Smooth at the pixel scale, so bilinear warping stays exact to well under 1/255 at 64 px.
TEXTURES: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "green grass": (0.08, (0.6, 1.0, 0.4), 0.0),
    "sand": (0.08, (1.0, 0.85, 0.6), 0.0),
    "water": (0.06, (0.6, 0.85, 1.0), 0.0),
    "snow": (0.05, (1.0, 1.0, 0.92), -1.0),
    "gray road": (0.09, (1.0, 1.0, 1.05), 0.0),
}

CAMERAS: tuple[str, ...] = ("none", "pan", "zoom", "pan+zoom")
LIGHTINGS: tuple[str, ...] = ("none", "drift", "flicker")
# A dark post: far from every object colour and background (>= 0.35 RGB distance).
OCCLUDER_COLOUR: tuple[float, float, float] = (0.12, 0.08, 0.06)
LAYERS: tuple[str, ...] = ("background", "object", "occluder")

_SUPERSAMPLE = 4
_EDGE = 1e-5  # bilinear weight on another layer's pixels below which a warped pixel still counts as exact


def colour_hue(rgb) -> float:
    """Hue in degrees [0, 360) of an RGB triple in 0..1."""
    h, _, _ = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
    return h * 360.0


@dataclass(frozen=True)
class Scene:
    """Everything that determines a clip. ``size`` is the object's half-extent as a fraction of the
    frame width; ``resolution`` is the (square) frame side in pixels.

    Motion over the clip (all off by default; see the module docstring): ``camera`` one of CAMERAS,
    ``lighting`` one of LIGHTINGS, ``growth`` the object's size at the last frame relative to the first,
    ``occluder`` a foreground post crossing the object, ``texture`` finer background detail. None of them
    changes the caption."""

    shape: str = "ball"
    colour: str = "red"
    background: str = "green grass"
    path: str = "bounce"
    size: float = 0.2
    seed: int = 0
    frames: int = 8
    resolution: int = 64
    camera: str = "none"
    lighting: str = "none"
    growth: float = 1.0
    occluder: bool = False
    texture: bool = False

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
        for name, low in (("frames", 1), ("resolution", 8), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"Scene.{name} must be an integer >= {low}, got {value!r}")
        if self.camera not in CAMERAS:
            raise ValueError(f"Scene.camera must be one of {CAMERAS}, got {self.camera!r}")
        if self.lighting not in LIGHTINGS:
            raise ValueError(f"Scene.lighting must be one of {LIGHTINGS}, got {self.lighting!r}")
        if not (self.growth > 0 and 0.03 <= self.size * self.growth <= 0.3):
            raise ValueError(f"Scene.growth must keep size * growth in [0.03, 0.3], got {self.growth} "
                             f"(size {self.size})")

    @property
    def still(self) -> bool:
        """Whether the frames without the object are all the same (no camera, lighting or occluder)."""
        return self.camera == "none" and self.lighting == "none" and not self.occluder

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
    """A rendered clip: frames [F,H,W,3] float32 0..1, masks [F,H,W] bool, coverage [F,H,W] float32 (the object's
    visible coverage: pixels the occluder hides are not the object's; masks are coverage > 0.5).

    Also known exactly, computed from ``scene`` when first asked for:

    - ``plates`` [F,H,W,3] float32: the frames without the object (background under camera and light, occluder).
    - ``gains`` [F,3]: the light's RGB gain per frame (ones when ``scene.lighting == "none"``).
    - ``occlusion`` [F,H,W] float32: the occluder's coverage (zeros without one).
    - ``flow(t)`` [H,W,2]: for every pixel of frame t+1, the (x, y) position in frame t of the same point of the
      layer seen there (background: camera motion; object: its path and growth; occluder: its slide), in pixel
      units with pixel (row i, column j) centred at x=j, y=i. ``flow()``: every pair, [F-1,H,W,2].
    - ``warp(frames, t)``: ``frames[t]`` sampled bilinearly at ``flow(t)`` and relit by the known change of
      light, i.e. frame t+1 as predicted from frame t; [H,W,3], or [F-1,H,W,3] for every pair with ``t=None``.
    - ``valid(t, region)``: [H,W] bool, the pixels of frame t+1 where that prediction is exact: one layer alone at
      the pixel and at the four bilinear neighbours of its source in frame t, and ``border`` pixels in from the
      frame's edges in both frames. ``region``: "frame" (any layer), "background" or "object".
    """

    frames: torch.Tensor
    masks: torch.Tensor
    caption: str
    scene: Scene
    coverage: torch.Tensor

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.frames.numpy(), self.masks.numpy()

    @cached_property
    def plates(self) -> torch.Tensor:
        return torch.from_numpy(render_plates(self.scene).astype(np.float32))

    @cached_property
    def gains(self) -> torch.Tensor:
        return torch.from_numpy(lighting_gains(self.scene).astype(np.float32))

    @cached_property
    def occlusion(self) -> torch.Tensor:
        return torch.from_numpy(occluder_coverage(self.scene).astype(np.float32))

    @cached_property
    def _layers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pixel, the layer mostly seen (index into LAYERS) and whether it is the only one seen, [F,H,W]."""
        occ, vis = self.occlusion, self.coverage
        weights = torch.stack([(1 - occ) - vis, vis, occ])  # background's share: (1 - occ) * (1 - raw coverage)
        alone = torch.stack([(vis == 0) & (occ == 0), vis == 1, occ == 1])
        layer = weights.argmax(0)
        return layer, alone.gather(0, layer[None])[0]

    @cached_property
    def _flows(self) -> torch.Tensor:
        return torch.from_numpy(motion_flow(self.scene, self._layers[0][1:].numpy()).astype(np.float32))

    @cached_property
    def _exact(self) -> torch.Tensor:
        """[F-1,H,W]: one layer alone at the pixel of frame t+1 and under all of its source's bilinear weights."""
        layer, alone = self._layers
        alone_before = torch.stack([(layer[:-1] == k) & alone[:-1] for k in range(len(LAYERS))], 1).float()
        share = _sample(alone_before, self._flows).gather(1, layer[1:, None])[:, 0]
        return alone[1:] & (share >= 1 - _EDGE)

    def flow(self, t: Optional[int] = None) -> torch.Tensor:
        """Where each pixel of frame t+1 was in frame t: [H,W,2] (x, y), or [F-1,H,W,2] for every pair."""
        return (self._flows if t is None else self._flows[self._check_pair(t)]).clone()

    def warp(self, frames, t: Optional[int] = None) -> torch.Tensor:
        """Frame t+1 predicted from ``frames[t]`` by the known motion and light: [H,W,3], or [F-1,H,W,3]."""
        frames = (frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames))).float()
        pairs = slice(0, self.scene.frames - 1) if t is None else slice(self._check_pair(t), t + 1)
        ratio = self.gains[1:][pairs] / self.gains[:-1][pairs]
        out = _sample(frames[pairs].permute(0, 3, 1, 2), self._flows[pairs].to(frames.device)).permute(0, 2, 3, 1)
        out = out * ratio[:, None, None, :].to(out.device)
        return out if t is None else out[0]

    def valid(self, t: Optional[int] = None, region: str = "frame", border: int = 1) -> torch.Tensor:
        """Pixels of frame t+1 that ``warp`` predicts exactly: [H,W] bool, or [F-1,H,W] for every pair."""
        if region not in ("frame", "background", "object"):
            raise ValueError(f"region must be 'frame', 'background' or 'object', got {region!r}")
        res, grid = self.scene.resolution, self._flows
        inside = lambda v: (v >= border) & (v <= res - 1 - border)
        idx = torch.arange(res)
        ok = self._exact & inside(grid[..., 0]) & inside(grid[..., 1]) & inside(idx)[:, None] & inside(idx)[None, :]
        if region != "frame":
            ok &= self._layers[0][1:] == LAYERS.index(region)
        return ok if t is None else ok[self._check_pair(t)]

    def _check_pair(self, t: int) -> int:
        if not 0 <= t < self.scene.frames - 1:
            raise ValueError(f"frame pair (t, t+1) needs 0 <= t < {self.scene.frames - 1}, got t={t}")
        return t


def _sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of images [N,C,H,W] at pixel positions grid [N,H,W,2] (x, y; pixel centres at integers)."""
    h, w = images.shape[-2:]
    if images.shape[0] == 0:
        return images.new_zeros(images.shape)
    norm = torch.stack([grid[..., 0] * (2.0 / (w - 1)) - 1, grid[..., 1] * (2.0 / (h - 1)) - 1], -1)
    return torch.nn.functional.grid_sample(images, norm.to(images.dtype), mode="bilinear", padding_mode="border",
                                           align_corners=True)


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


def _clip_time(scene: Scene) -> np.ndarray:
    """Each frame's time in the clip, 0 at the first frame and 1 at the last [F]."""
    return np.arange(scene.frames) / max(scene.frames - 1, 1)


def trajectory(scene: Scene) -> np.ndarray:
    """Object centres [F, 2] (x, y) in pixels (frame coordinates: the camera follows the object). Depends only
    on path, seed, size, growth, frames, resolution."""
    rng = np.random.default_rng([int(scene.seed), 3])
    res = float(scene.resolution)
    half = scene.size * res * max(1.0, scene.growth)  # room for the object at its largest
    margin = half * 1.15 + 1.0
    lo, hi = margin, res - margin
    f = scene.frames
    u = _clip_time(scene)
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


def object_halves(scene: Scene) -> np.ndarray:
    """The object's half-extent per frame [F] in pixels: ``size`` at the first frame, ``size * growth`` at the
    last, linear in between (its area scales as the square)."""
    return scene.size * scene.resolution * (1.0 + (scene.growth - 1.0) * _clip_time(scene))


def camera_path(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The camera per frame: ``zoom`` [F] (world pixels per frame pixel, <= 1) and ``centre`` [F, 2] (the world
    point at the frame's centre). Frame t's pixel centre at (x, y) (x = column + 0.5) shows the world point
    ``zoom[t] * ((x, y) - res / 2) + centre[t]``; world units are the static plate's pixels, so ``camera="none"``
    (zoom 1, centre res/2) sees exactly ``render_background``. "pan": the centre moves 15-30% of the frame
    along a straight line in a random direction over the clip; "zoom": zooms in or out by 15-25%."""
    rng = np.random.default_rng([int(scene.seed), 13])
    res = float(scene.resolution)
    u = _clip_time(scene)
    angle, distance = rng.uniform(0.0, 2 * np.pi), rng.uniform(0.15, 0.3) * res
    zoom_in, amount = rng.random() < 0.5, rng.uniform(0.15, 0.25)
    centre = np.full((scene.frames, 2), res / 2)
    zoom = np.ones(scene.frames)
    if scene.camera in ("pan", "pan+zoom"):
        centre += distance * (u - 0.5)[:, None] * np.array([np.cos(angle), np.sin(angle)])
    if scene.camera in ("zoom", "pan+zoom"):
        zoom = 1.0 - amount * (u if zoom_in else 1.0 - u)
    return zoom, centre


def lighting_gains(scene: Scene) -> np.ndarray:
    """The light's RGB gain per frame [F, 3], all in (0, 1] so that no pixel clips and dividing undoes the light
    exactly. "drift": the brightness falls or rises linearly by 15-25% over the clip and the light's colour drifts
    (each channel down by up to 12% at the end); "flicker": that drift times a per-frame brightness jitter of
    up to 8%. Ones for "none"."""
    if scene.lighting == "none":
        return np.ones((scene.frames, 3))
    rng = np.random.default_rng([int(scene.seed), 19])
    u = _clip_time(scene)
    dim_at_end, depth = rng.random() < 0.5, rng.uniform(0.15, 0.25)
    tint = rng.uniform(0.0, 0.12, size=3)
    jitter = rng.uniform(0.0, 1.0, size=scene.frames)
    brightness = 1.0 - depth * (u if dim_at_end else 1.0 - u)
    gains = brightness[:, None] * (1.0 - tint[None, :] * u[:, None])
    if scene.lighting == "flicker":
        gains = gains * (1.0 - 0.08 * jitter)[:, None]
    return gains


def occluder_path(scene: Scene) -> tuple[np.ndarray, float]:
    """The occluder's centre x per frame [F] and its width, in pixels: a full-height post sliding a frame width
    over the clip at constant speed (left or right, from the seed), over the object's centre at the middle
    frame. Narrower than the object at its smallest, so it never hides all of it. Depends on what the
    trajectory depends on, so colour, shape and background edits keep it."""
    rng = np.random.default_rng([int(scene.seed), 17])
    direction = 1.0 if rng.random() < 0.5 else -1.0
    res = float(scene.resolution)
    u, mid = _clip_time(scene), scene.frames // 2
    x = trajectory(scene)[mid, 0] + direction * (u - u[mid]) * res
    return x, min(0.08 * res, 0.8 * float(object_halves(scene).min()))


def occluder_coverage(scene: Scene) -> np.ndarray:
    """The occluder's exact (area) coverage [F, H, W] in 0..1; zeros when ``scene.occluder`` is off."""
    res = scene.resolution
    if not scene.occluder:
        return np.zeros((scene.frames, res, res))
    x, width = occluder_path(scene)
    cols = np.arange(res, dtype=np.float64)[None, :]
    cov = np.clip(np.minimum(cols + 1, x[:, None] + width / 2) - np.maximum(cols, x[:, None] - width / 2), 0.0, 1.0)
    return np.repeat(cov[:, None, :], res, axis=1)


def motion_flow(scene: Scene, layers: np.ndarray) -> np.ndarray:
    """The known motion [F-1, H, W, 2] float64 (what ``Clip.flow`` gives): for each pair (t, t+1) and pixel of frame
    t+1, the (x, y) position in frame t (pixel centres at integers) of the same point of the layer that ``layers``
    [F-1, H, W] (index into LAYERS) says is seen there: the background moves with the camera, the object along
    its path and growth, the occluder along its slide."""
    res = scene.resolution
    y, x = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5  # pixel centres of frame t+1
    per_pair = lambda a: a[:, None, None]
    zoom, centre = camera_path(scene)
    c = res / 2
    bg = [(per_pair(zoom[1:]) * (v - c) + per_pair(centre[1:, k] - centre[:-1, k])) / per_pair(zoom[:-1]) + c
          for k, v in enumerate((x, y))]
    pos, halves = trajectory(scene), object_halves(scene)
    obj = [per_pair(pos[:-1, k]) + (v - per_pair(pos[1:, k])) * per_pair(halves[:-1] / halves[1:])
           for k, v in enumerate((x, y))]
    occ_x = occluder_path(scene)[0] if scene.occluder else np.zeros(scene.frames)
    occ = [x - per_pair(np.diff(occ_x)), y]
    which = [layers == k for k in range(len(LAYERS))]
    return np.stack([np.select(which, [np.broadcast_to(v, layers.shape) for v in (bg[k], obj[k], occ[k])]) - 0.5
                     for k in range(2)], axis=-1)


# ----------------------------------------------------------------------------------------------
# backgrounds


def _value_noise(rng: np.random.Generator, margin_rng: np.random.Generator, cells: int, resolution: int,
                 x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth noise in [-1, 1] at world points (x, y) in pixels (the frame spans 0..resolution): a random grid
    of (cells+1)^2 values over the frame, drawn from ``rng`` (as the static plate always drew it), inside a
    margin of ``cells`` more cells a side drawn from ``margin_rng``, interpolated with a smoothstep. Low
    frequency on purpose, so a 4x-downsampling VAE can reproduce it."""
    grid = margin_rng.uniform(-1.0, 1.0, size=(3 * cells + 1, 3 * cells + 1))
    grid[cells:2 * cells + 1, cells:2 * cells + 1] = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))

    def cell(v):
        t = v / resolution * cells
        i0 = np.clip(np.floor(t).astype(int), -cells, 2 * cells - 1)
        fr = t - i0
        return i0 + cells, fr * fr * (3 - 2 * fr)  # smoothstep

    ix, fx = cell(x)
    iy, fy = cell(y)
    a = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
    b = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
    return a * (1 - fy) + b * fy


def background_at(scene: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The background [..., 3] float64 at world points (x, y) (pixels; the frame spans 0..resolution, and the
    world goes on a frame further on every side). Depends only on background, texture, seed and resolution."""
    base, second, amp, kind = BACKGROUNDS[scene.background]
    bg_index = list(BACKGROUNDS).index(scene.background)
    rng = np.random.default_rng([int(scene.seed), 7, bg_index])
    margin = np.random.default_rng([int(scene.seed), 7, bg_index, 1])
    res = scene.resolution
    img = np.empty(x.shape + (3,), dtype=np.float64)
    img[:] = np.asarray(base)
    if kind == "grass":
        n = 0.7 * _value_noise(rng, margin, 3, res, x, y) + 0.3 * _value_noise(rng, margin, 8, res, x, y)
        img += amp * n[..., None] * np.array([0.6, 1.0, 0.5])
    elif kind == "noise":
        n = 0.7 * _value_noise(rng, margin, 3, res, x, y) + 0.3 * _value_noise(rng, margin, 6, res, x, y)
        img += amp * n[..., None]
    elif kind == "stripes":
        period = rng.uniform(0.18, 0.26) * res
        wob_amp = rng.uniform(0.02, 0.05) * res
        wob_phase = rng.uniform(0, 2 * np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (y + wob_amp * np.sin(2 * np.pi * x / res * 1.5 + wob_phase)) / period + phase)
        t = 0.5 + 0.5 * wave
        img = (1 - t)[..., None] * np.asarray(base) + t[..., None] * np.asarray(second)
        img += amp * _value_noise(rng, margin, 3, res, x, y)[..., None]
    elif kind == "plain":
        pass
    if scene.texture:
        t_amp, tint, offset = TEXTURES[scene.background]
        trng = np.random.default_rng([int(scene.seed), 7, bg_index, 2])
        n = 0.6 * _value_noise(trng, trng, 5, res, x, y) + 0.4 * _value_noise(trng, trng, 10, res, x, y)
        img += t_amp * (n + offset)[..., None] * np.asarray(tint)
    return np.clip(img, 0.0, 1.0)


def render_background(scene: Scene) -> np.ndarray:
    """The static plate [H, W, 3] float64: the background as ``camera="none"`` sees it, unlit. Depends only on
    background, texture, seed and resolution."""
    y, x = np.mgrid[0:scene.resolution, 0:scene.resolution].astype(np.float64) + 0.5
    return background_at(scene, x, y)


def _backgrounds(scene: Scene) -> np.ndarray:
    """The background each frame sees, unlit: [1,H,W,3] when the camera is still, else [F,H,W,3]."""
    if scene.camera == "none":
        return render_background(scene)[None]
    res = scene.resolution
    y, x = np.mgrid[0:res, 0:res].astype(np.float64) + 0.5
    zoom, centre = camera_path(scene)
    c = res / 2
    return np.stack([background_at(scene, z * (x - c) + cx, z * (y - c) + cy) for z, (cx, cy) in zip(zoom, centre)])


def _foreground_and_light(scene: Scene, frames: np.ndarray) -> np.ndarray:
    """``frames`` [F,H,W,3] with the occluder in front and the light on."""
    if scene.occluder:
        occ = occluder_coverage(scene)[..., None]
        frames = occ * np.asarray(OCCLUDER_COLOUR) + (1.0 - occ) * frames
    if scene.lighting != "none":
        frames = frames * lighting_gains(scene)[:, None, None, :]
    return frames


def render_plates(scene: Scene) -> np.ndarray:
    """The frames without the object [F, H, W, 3] float64: background (under the camera), occluder, light."""
    res = scene.resolution
    plates = np.broadcast_to(_backgrounds(scene), (scene.frames, res, res, 3))
    return np.array(_foreground_and_light(scene, plates))


# ----------------------------------------------------------------------------------------------


def render(scene: Scene) -> Clip:
    """Render a clip. Pure function of ``scene``: identical scenes give bit-identical clips."""
    res = scene.resolution
    bg = _backgrounds(scene)
    obj = np.asarray(COLOURS[scene.colour], dtype=np.float64)
    centres = trajectory(scene)
    halves = object_halves(scene)
    cov = np.stack([shape_coverage(scene.shape, cx, cy, half, res) for (cx, cy), half in zip(centres, halves)])
    frames = _foreground_and_light(scene, cov[..., None] * obj + (1.0 - cov[..., None]) * bg)
    if scene.occluder:
        cov = cov * (1.0 - occluder_coverage(scene))  # what the occluder hides is not the object's
    masks = cov > 0.5
    return Clip(
        frames=torch.from_numpy(frames.astype(np.float32)),
        masks=torch.from_numpy(masks),
        caption=caption(scene),
        scene=scene,
        coverage=torch.from_numpy(cov.astype(np.float32)),
    )


def random_scene(rng: np.random.Generator, frames: int = 8, resolution: int = 64, **motion) -> Scene:
    """A random scene (uniform over shape, colour, background, path; size and seed random). ``motion``: other
    Scene fields (camera=..., lighting=...), which draw nothing from ``rng``."""
    return Scene(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        background=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        path=list(PATHS)[int(rng.integers(len(PATHS)))],
        size=float(rng.uniform(0.16, 0.23)),
        seed=int(rng.integers(0, 2**31 - 1)),
        frames=frames,
        resolution=resolution,
        **motion,
    )


def random_motion(rng: np.random.Generator, size: float) -> dict:
    """Random motion fields for a ``Scene`` of object half-extent ``size`` (uniform camera and lighting, growth
    0.75-1.3 on a third of clips, an occluder on a third, texture on half): the moving world's distribution,
    for training a model that has to reconstruct such clips."""
    grows = rng.random() < 1 / 3
    growth = float(rng.uniform(0.75, min(1.3, 0.3 / size))) if grows else 1.0
    return dict(camera=CAMERAS[int(rng.integers(len(CAMERAS)))],
                lighting=LIGHTINGS[int(rng.integers(len(LIGHTINGS)))],
                growth=growth, occluder=bool(rng.random() < 1 / 3), texture=bool(rng.random() < 0.5))
