"""Scene sampling: which shapes, which action, where everything is on every frame.

One video = one acting object doing one labelled action + 0-2 distractor shapes that wander
(smooth curvy paths, often faster than the actor) + a scrolling textured background + camera
jitter, so that "where the motion is" does not tell where the labelled action is; the caption
(colour + shape) does. All randomness comes from the `np.random.Generator` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tgmae.errors import SettingsError
from tgmae.data.synthetic.background import BACKGROUNDS, EXTRA_BACKGROUNDS, make_texture
from tgmae.data.synthetic.shapes import EXTENT, ROTATION_INVARIANT, SHAPES

# Class id i = ACTIONS[i]; written to classes.txt in this order.
ACTIONS: tuple[str, ...] = (
    "move left",
    "move right",
    "move up",
    "move down",
    "grow",
    "shrink",
    "rotate clockwise",
    "rotate counterclockwise",
    "blink",
    "bounce",
)

# Saturated object colours (RGB); backgrounds are muted, so these stay recognisable.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 195, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 220, 40),
    "orange": (250, 140, 20),
    "purple": (150, 55, 210),
    "cyan": (40, 215, 225),
    "white": (245, 245, 245),
}

ACTING, DISTRACTOR = "acting", "distractor"
MAX_DISTRACTORS = 2


@dataclass
class Track:
    """One shape over the clip, in world (un-shaken) pixel coordinates; arrays are float32 [T].

    motion: the action name for the acting object, "wander" for distractors.
    angle: clockwise radians; alpha: opacity in (0, 1].
    """

    shape: str
    colour: str
    role: str
    motion: str
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def name(self) -> str:
        """Caption name, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """Everything needed to render one video.

    texture: uint8 [Hc, Wc, 3] background canvas; frame t shows texture[y:y+H, x:x+W] with
    (y, x) = view[t] (int64 [T, 2]; scroll + camera shake). shake: int64 [T, 2] (dy, dx) camera
    jitter; objects are drawn at their world position minus shake, so the whole frame shifts.
    tracks: back to front; acting: index of the acting object in tracks.
    """

    label: int
    height: int
    width: int
    frames: int
    background: str
    texture: np.ndarray
    view: np.ndarray
    shake: np.ndarray
    scroll: tuple[float, float]
    jitter: int
    tracks: list[Track]
    acting: int

    @property
    def action(self) -> str:
        return ACTIONS[self.label]

    @property
    def actor(self) -> Track:
        return self.tracks[self.acting]


def _const(value: float, frames: int) -> np.ndarray:
    return np.full(frames, value, dtype=np.float32)


def _acting_track(
    action: str, shape: str, colour: str, height: int, width: int, frames: int, pad: int, rng: np.random.Generator
) -> Track:
    """The labelled action as per-frame centre / radius / angle / alpha. The actor stays fully
    inside the frame (pad = camera jitter amplitude + 1 px)."""
    side = min(height, width)
    s = np.linspace(0.0, 1.0, frames, dtype=np.float32)  # normalized time
    ext = EXTENT[shape]
    radius = rng.uniform(0.09, 0.13) * side
    if action in ("grow", "shrink"):
        small, big = rng.uniform(0.06, 0.075) * side, rng.uniform(0.14, 0.16) * side
        r = small + (big - small) * s if action == "grow" else big + (small - big) * s
        radius = big
    else:
        r = _const(radius, frames)
    margin = radius * ext + pad
    cx = _const(rng.uniform(margin, width - margin), frames)
    cy = _const(rng.uniform(margin, height - margin), frames)
    angle = _const(rng.uniform(-0.3, 0.3), frames)
    alpha = _const(1.0, frames)
    if action.startswith("move "):
        horizontal = action in ("move left", "move right")
        extent = width if horizontal else height
        room = extent - 2 * margin
        dist = min(rng.uniform(0.35, 0.55) * extent, room)
        start = rng.uniform(margin, margin + room - dist)
        path = start + dist * s
        if action in ("move left", "move up"):
            path = path[::-1].copy()
        if horizontal:
            cx = path.astype(np.float32)
        else:
            cy = path.astype(np.float32)
    elif action in ("rotate clockwise", "rotate counterclockwise"):
        sign = 1.0 if action == "rotate clockwise" else -1.0
        angle = angle + np.float32(sign * rng.uniform(0.55, 1.0) * math.pi) * s
    elif action == "blink":
        cycles = rng.uniform(2.0, 3.5)
        alpha = (0.25 + 0.75 * (0.5 + 0.5 * np.cos(2 * math.pi * cycles * s))).astype(np.float32)
    elif action == "bounce":
        floor = height - margin - rng.uniform(0.0, 0.1) * height
        jump = min(rng.uniform(0.3, 0.45) * height, floor - margin)
        bounces = rng.uniform(1.5, 3.0)
        cy = (floor - jump * np.abs(np.sin(math.pi * bounces * s))).astype(np.float32)
    elif action not in ("grow", "shrink"):
        raise ValueError(f"unknown action {action!r}: expected one of {ACTIONS}")
    return Track(shape, colour, ACTING, action, cx, cy, r, angle, alpha)


def _wander_track(shape: str, colour: str, height: int, width: int, frames: int, rng: np.random.Generator,
                  speed: float = 1.0) -> Track:
    """A distractor: constant size, smooth curvy path (a sinusoid per axis, 0.75-1.5 cycles per
    clip at speed 1, so it is never a clean straight move) and a slow spin. May leave the frame
    partly. speed: multiplies the path's cycles per clip and the spin (0 = a static shape)."""
    side = min(height, width)
    s = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    radius = rng.uniform(0.08, 0.12) * side
    centre = []
    for extent in (width, height):
        amp = rng.uniform(0.12, 0.25) * extent
        lo, hi = amp + radius, extent - amp - radius
        c0 = rng.uniform(lo, hi) if hi > lo else extent / 2
        freq, phase = rng.uniform(0.75, 1.5) * speed, rng.uniform(0, 2 * math.pi)
        centre.append((c0 + amp * np.sin(2 * math.pi * freq * s + phase)).astype(np.float32))
    angle = (rng.uniform(-math.pi, math.pi) + rng.uniform(-0.8, 0.8) * speed * math.pi * s).astype(np.float32)
    return Track(shape, colour, DISTRACTOR, "wander", centre[0], centre[1], _const(radius, frames), angle, _const(1.0, frames))


def check_scene_options(distractors: int, distractor_speed: float, background: str | None) -> None:
    """The scene's difficulty and look options; SettingsError (a ValueError) naming the bad one."""
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise SettingsError(f"distractors={distractors}: must be in 0..{MAX_DISTRACTORS}")
    if not distractor_speed >= 0:
        raise SettingsError(f"distractor_speed={distractor_speed}: must be >= 0")
    if background is not None and background not in BACKGROUNDS + EXTRA_BACKGROUNDS:
        raise SettingsError(f"background={background!r}: expected one of {', '.join(BACKGROUNDS + EXTRA_BACKGROUNDS)}")


def sample_scene(label: int, height: int, width: int, frames: int, rng: np.random.Generator, *,
                 distractors: int = MAX_DISTRACTORS, distractor_speed: float = 1.0,
                 background: str | None = None, static_camera: bool = False) -> Scene:
    """Sample one scene whose acting object performs ACTIONS[label].

    Difficulty knobs (defaults: the original, hardest set; every setting draws the same random
    numbers, so only what the knob names changes): distractors: at most this many (0-2; drawn as
    0/1/2 with p = .15/.4/.45, then capped); distractor_speed: scales their path cycles and spin
    (0 = static); background: one of BACKGROUNDS or EXTRA_BACKGROUNDS instead of a random one;
    static_camera: the background neither scrolls nor shakes (the objects' tracks are unchanged).
    Raises ValueError naming the bad argument."""
    if not 0 <= label < len(ACTIONS):
        raise ValueError(f"label={label}: expected 0..{len(ACTIONS) - 1}")
    check_scene_options(distractors, distractor_speed, background)
    action = ACTIONS[label]
    scale = min(height, width) / 128.0
    colours = list(COLOURS)
    shapes = [s for s in SHAPES if not (action.startswith("rotate") and s in ROTATION_INVARIANT)]
    actor_shape, actor_colour = str(rng.choice(shapes)), str(rng.choice(colours))

    jitter = int(round(rng.choice([0, 1, 1, 2]) * max(scale, 0.5)))
    shake = rng.integers(-jitter, jitter + 1, size=(frames, 2)) if jitter else np.zeros((frames, 2), np.int64)
    tracks = [_acting_track(action, actor_shape, actor_colour, height, width, frames, jitter + 1, rng)]

    # Distractors: a (colour, shape) pair different from the actor and from each other, so the
    # caption's "red circle" names exactly one object.
    used = {(actor_colour, actor_shape)}
    for _ in range(int(rng.choice([0, 1, 2], p=[0.15, 0.4, 0.45]))):
        while True:
            pair = (str(rng.choice(colours)), str(rng.choice(SHAPES)))
            if pair not in used:
                break
        used.add(pair)
        tracks.append(_wander_track(pair[1], pair[0], height, width, frames, rng, distractor_speed))
    order = rng.permutation(len(tracks))
    order = order[order <= distractors]  # drawn as in the original set, then capped
    tracks = [tracks[i] for i in order]
    acting = int(np.flatnonzero(order == 0)[0])

    drawn = str(rng.choice(BACKGROUNDS))
    background = drawn if background is None else background
    speed = rng.uniform(0.2, 1.0) * scale  # px / frame
    heading = rng.uniform(0, 2 * math.pi)
    vy, vx = speed * math.sin(heading), speed * math.cos(heading)
    pad = int(math.ceil(speed * frames)) + jitter + 1
    texture = make_texture(background, height + 2 * pad, width + 2 * pad, scale, rng)
    t = np.arange(frames)
    view = np.stack([np.rint(vy * t), np.rint(vx * t)], axis=1).astype(np.int64) + pad + shake
    if static_camera:
        shake, view, vy, vx, jitter = np.zeros_like(shake), np.full_like(view, pad), 0.0, 0.0, 0
    return Scene(
        label=label,
        height=height,
        width=width,
        frames=frames,
        background=background,
        texture=texture,
        view=view,
        shake=shake.astype(np.int64),
        scroll=(round(vy, 3), round(vx, 3)),
        jitter=jitter,
        tracks=tracks,
        acting=acting,
    )
