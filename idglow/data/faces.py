"""Procedural faces for the demo profile, with their ground truth.

Every demo identity is a ``FaceStyle``: a fixed set of shape and colour choices drawn from a
seed, different enough between identities that a tiny recogniser can learn them. ``draw_face``
paints one face onto any canvas at a given centre, scale and in-plane angle, and returns the
face box and the five landmarks in insightface's order (left eye, right eye, nose tip, left
mouth corner, right mouth corner, "left" meaning the image's left). Portraits and, later, group
photos are composed from it, so face boxes and identities are known wherever a face is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Color = tuple[int, int, int]

_SKIN_TONES: tuple[Color, ...] = (
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 132),
    (198, 134, 96),
    (161, 102, 68),
    (120, 74, 48),
    (87, 52, 36),
    (236, 206, 180),
)
HAIR_COLORS: dict[str, Color] = {
    "black": (20, 16, 14),
    "dark_brown": (70, 42, 24),
    "brown": (128, 84, 44),
    "blond": (214, 176, 100),
    "gray": (150, 150, 150),
    "red": (160, 48, 24),
    "white": (236, 232, 220),
    "dyed_blue": (45, 45, 90),
}
_EYE_COLORS: tuple[Color, ...] = ((60, 40, 20), (40, 90, 160), (50, 120, 60), (110, 110, 110), (20, 20, 20))
HAIR_STYLES = ("short", "long", "bald", "bangs")


@dataclass(frozen=True)
class FaceStyle:
    """The look of one identity; every field is fixed for all images of that identity."""

    skin: Color
    hair_name: str  # a key of HAIR_COLORS
    hair_style: str
    eye_color: Color
    aspect: float  # face height / width
    eye_spacing: float  # eye centre distance from the midline, in face half-widths
    eye_size: float
    eye_height: float  # eye line, in face half-heights above the centre
    nose_length: float
    mouth_width: float
    brow_thickness: float
    beard: bool
    glasses: bool
    mark: tuple[float, float] | None  # a mole, in face-local units, or none
    male: bool

    @property
    def hair(self) -> Color:
        return HAIR_COLORS[self.hair_name]


@dataclass(frozen=True)
class FaceTruth:
    """Where a drawn face is: box (x1, y1, x2, y2) and the five landmarks, in pixels."""

    bbox: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]


def sample_style(rng: np.random.Generator) -> FaceStyle:
    """Draw one identity's look."""
    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    male = bool(rng.random() < 0.5)
    return FaceStyle(
        skin=_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))],
        hair_name=list(HAIR_COLORS)[int(rng.integers(len(HAIR_COLORS)))],
        hair_style=hair_style,
        eye_color=_EYE_COLORS[int(rng.integers(len(_EYE_COLORS)))],
        aspect=float(rng.uniform(1.12, 1.42)),
        eye_spacing=float(rng.uniform(0.34, 0.5)),
        eye_size=float(rng.uniform(0.09, 0.15)),
        eye_height=float(rng.uniform(0.1, 0.26)),
        nose_length=float(rng.uniform(0.16, 0.32)),
        mouth_width=float(rng.uniform(0.22, 0.42)),
        brow_thickness=float(rng.uniform(0.02, 0.07)),
        beard=bool(male and rng.random() < 0.45),
        glasses=bool(rng.random() < 0.25),
        mark=(float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.05, 0.45))) if rng.random() < 0.5 else None,
        male=male,
    )


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float = 0.0, end: float = 2 * math.pi, n: int = 48):
    angles = np.linspace(start, end, n)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color)  # type: ignore[return-value]


def draw_face(
    image: Image.Image,
    style: FaceStyle,
    center: tuple[float, float],
    half_width: float,
    angle_deg: float = 0.0,
    smile: float = 0.0,
    light: float = 1.0,
) -> FaceTruth:
    """Paint one face of ``style`` onto ``image`` and return where it is.

    ``half_width`` is the face's half-width in pixels; ``angle_deg`` rotates it in the image
    plane (positive is counter-clockwise on screen); ``smile`` in [-1, 1] bends the mouth;
    ``light`` scales every colour of the face, as a change of exposure would.
    """
    draw = ImageDraw.Draw(image)
    w = half_width
    h = w * style.aspect
    theta = math.radians(-angle_deg)  # image y points down, so screen CCW is a negative angle
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    origin = np.asarray(center, dtype=np.float64)

    def to_image(local: np.ndarray) -> np.ndarray:
        """Face-local units (x in half-widths, y in half-heights, y down) to pixels."""
        scaled = np.asarray(local, dtype=np.float64) * np.array([w, h])
        return scaled @ rot.T + origin

    def polygon(local: np.ndarray, fill: Color) -> None:
        points = to_image(local)
        draw.polygon([tuple(p) for p in points], fill=_shade(fill, light))

    hair = style.hair
    if style.hair_style == "long":
        polygon(np.array([[-1.25, -0.55], [1.25, -0.55], [1.3, 1.25], [-1.3, 1.25]]), _shade(hair, 0.9))
    if style.hair_style != "bald":
        polygon(_ellipse(0, -0.18, 1.12, 0.98, math.pi, 2 * math.pi), hair)
    # Ears, then the face over them.
    for side in (-1, 1):
        polygon(_ellipse(side * 0.98, 0.02, 0.16, 0.22), _shade(style.skin, 0.93))
    polygon(_ellipse(0, 0, 1.0, 1.0, n=64), style.skin)
    if style.hair_style in ("short", "long"):
        polygon(_ellipse(0, -0.62, 0.92, 0.38, math.pi, 2 * math.pi), hair)
    elif style.hair_style == "bangs":
        polygon(np.array([[-0.9, -0.55], [-0.75, -0.2], [0.75, -0.2], [0.9, -0.55], [0, -1.0]]), hair)
    if style.beard:
        polygon(_ellipse(0, 0.55, 0.78, 0.45, 0, math.pi), _shade(hair, 0.85))

    eye_y = -style.eye_height
    eye_r = style.eye_size
    eye_ry = eye_r / style.aspect
    for side in (-1, 1):
        ex = side * style.eye_spacing
        polygon(
            np.array(
                [
                    [ex - eye_r * 1.2, eye_y - eye_ry * 1.9],
                    [ex + eye_r * 1.2, eye_y - eye_ry * 1.9],
                    [ex + eye_r * 1.2, eye_y - eye_ry * 1.9 - style.brow_thickness * 2],
                    [ex - eye_r * 1.2, eye_y - eye_ry * 1.9 - style.brow_thickness * 2],
                ]
            ),
            _shade(hair, 0.7),
        )
        polygon(_ellipse(ex, eye_y, eye_r * 1.15, eye_ry * 0.85), (250, 250, 250))
        polygon(_ellipse(ex, eye_y, eye_r * 0.6, eye_ry * 0.6), style.eye_color)
        polygon(_ellipse(ex, eye_y, eye_r * 0.25, eye_ry * 0.25), (10, 10, 10))
        if style.glasses:
            ring = _ellipse(ex, eye_y, eye_r * 2.0, eye_ry * 2.0)
            points = to_image(ring)
            draw.line([tuple(p) for p in points] + [tuple(points[0])], fill=(30, 30, 30), width=max(1, int(w * 0.04)))
    if style.glasses:
        bridge = to_image(np.array([[-style.eye_spacing + eye_r * 2, eye_y], [style.eye_spacing - eye_r * 2, eye_y]]))
        draw.line([tuple(p) for p in bridge], fill=(30, 30, 30), width=max(1, int(w * 0.04)))

    nose_tip = (0.0, eye_y + style.nose_length + 0.12)
    polygon(np.array([[0, eye_y + 0.1], [0.12, nose_tip[1]], [-0.12, nose_tip[1]]]), _shade(style.skin, 0.8))

    mouth_y = min(0.62, nose_tip[1] + 0.25)
    mw = style.mouth_width
    curve = np.linspace(-1, 1, 16)
    upper = np.stack([curve * mw, mouth_y - smile * 0.06 * (1 - curve**2) * -1 - 0.02], axis=1)
    lower = np.stack([curve[::-1] * mw, mouth_y + 0.05 + smile * 0.1 * (1 - curve[::-1] ** 2)], axis=1)
    polygon(np.concatenate([upper, lower]), (150, 50, 60))
    if style.mark is not None:
        polygon(_ellipse(style.mark[0], style.mark[1], 0.05, 0.05 / style.aspect), (60, 35, 25))

    landmarks_local = np.array(
        [
            [-style.eye_spacing, eye_y],
            [style.eye_spacing, eye_y],
            list(nose_tip),
            [-mw, mouth_y + 0.02],
            [mw, mouth_y + 0.02],
        ]
    )
    landmarks = to_image(landmarks_local)
    # The box insightface's detectors learn spans brow to chin; use the face outline's extent.
    outline = to_image(_ellipse(0, 0, 1.0, 1.0, n=64))
    x1, y1 = outline.min(axis=0)
    x2, y2 = outline.max(axis=0)
    return FaceTruth(
        bbox=(float(x1), float(y1), float(x2), float(y2)),
        landmarks=tuple((float(x), float(y)) for x, y in landmarks),
    )


def background(size: int, rng: np.random.Generator) -> Image.Image:
    """A soft two-colour vertical gradient, different for every image."""
    top = rng.integers(40, 220, size=3)
    bottom = rng.integers(40, 220, size=3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    pixels = (top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp).repeat(size, axis=1)
    noise = rng.normal(0, 4, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def render_portrait(
    style: FaceStyle, size: int, rng: np.random.Generator, smile: float | None = None
) -> tuple[Image.Image, FaceTruth]:
    """One centred head-and-shoulders portrait with small pose, light and expression jitter."""
    smile = float(rng.uniform(-0.3, 1.0)) if smile is None else smile
    image = background(size, rng)
    draw = ImageDraw.Draw(image)
    shirt = tuple(int(c) for c in rng.integers(20, 235, size=3))
    draw.ellipse([size * 0.12, size * 0.82, size * 0.88, size * 1.35], fill=shirt)
    center = (size * (0.5 + rng.uniform(-0.05, 0.05)), size * (0.46 + rng.uniform(-0.04, 0.04)))
    truth = draw_face(
        image,
        style,
        center=center,
        half_width=size * rng.uniform(0.22, 0.27),
        angle_deg=float(rng.uniform(-8, 8)),
        smile=smile,
        light=float(rng.uniform(0.88, 1.1)),
    )
    return image, truth


def render_group(styles: list[FaceStyle], size: int, rng: np.random.Generator) -> tuple[Image.Image, list[FaceTruth]]:
    """People side by side with their shoulders, as in a group photo."""
    image = background(size, rng)
    draw = ImageDraw.Draw(image)
    n = len(styles)
    half_width = size * 0.34 / n
    truths = []
    for i, style in enumerate(styles):
        cx = size * (i + 0.5) / n + rng.uniform(-0.03, 0.03) * size
        cy = size * 0.45 + rng.uniform(-0.04, 0.04) * size
        shirt = tuple(int(c) for c in rng.integers(20, 235, size=3))
        draw.ellipse(
            [cx - half_width * 1.7, cy + half_width * 1.3, cx + half_width * 1.7, cy + half_width * 4.5], fill=shirt
        )
        truths.append(
            draw_face(
                image,
                style,
                (cx, cy),
                half_width,
                angle_deg=float(rng.uniform(-6, 6)),
                smile=float(rng.uniform(0.2, 1.0)),
                light=float(rng.uniform(0.92, 1.05)),
            )
        )
    return image, truths
