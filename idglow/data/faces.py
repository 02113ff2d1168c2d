"""Procedural faces for the demo profile, with their ground truth.

Every demo identity is a ``FaceStyle``: a fixed set of shape and colour choices drawn from a
seed, different enough between identities that a tiny recogniser can learn them. ``draw_face``
paints one face onto any canvas at a given centre, scale and in-plane angle, and returns the
face box and the five landmarks in insightface's order (left eye, right eye, nose tip, left
mouth corner, right mouth corner, "left" meaning the image's left). Portraits, group photos and
scenes (``idglow.data.scenes``) are composed from it, so face boxes and identities are known
wherever a face is drawn.

The age axis: ``draw_face(..., age=...)`` draws the same identity younger. From ``ADULT_AGE`` on a
face has its identity's adult proportions, exactly as without ``age``; below it the face moves
towards a young child's (fully at ``FULL_CHILD_AGE``): rounder and shorter, eyes lower and
larger, nose and mouth smaller, no beard, long hair shorter and a bald head with short hair. The
identity's own traits (skin, hair and eye colour, relative eye spacing, brow, glasses, mole)
stay. Every identity also has an adult age of its own (``FaceStyle.age``), derived from its
look so that ``sample_style`` draws nothing more.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import astuple, dataclass

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
ADULT_AGE = 18  # from this age on a face is drawn with its identity's adult proportions
FULL_CHILD_AGE = 3  # at this age and below, with a young child's
YOUNG_CHILD_AGES = range(3, 9)  # ages that read as a young child (Task 2's structural change)
ADULT_AGES = range(20, 70)  # where FaceStyle.age falls


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

    @property
    def age(self) -> int:
        """The identity's age today, in years: a hash of its look, so that adding it left every
        ``sample_style`` draw (and so every demo image) as it was."""
        digest = hashlib.sha256(repr(astuple(self)).encode()).digest()
        return ADULT_AGES.start + int.from_bytes(digest[:8], "big") % len(ADULT_AGES)


@dataclass(frozen=True)
class FaceTruth:
    """Where a drawn face is: box (x1, y1, x2, y2) and the five landmarks, in pixels; and who:
    the age it was drawn at (years) and its identity's gender."""

    bbox: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    age: int
    male: bool


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


def childhood(age: float) -> float:
    """How far towards a young child's proportions a face of ``age`` is drawn: 0 from
    ``ADULT_AGE`` on, 1 at ``FULL_CHILD_AGE`` and below, linear between."""
    return min(1.0, max(0.0, (ADULT_AGE - age) / (ADULT_AGE - FULL_CHILD_AGE)))


@dataclass(frozen=True)
class _Proportions:
    """The face geometry ``draw_face`` uses, in face-local units. At childhood 0 every value is
    exactly the adult one (products with 1.0, sums with 0.0), so adult faces are unchanged."""

    aspect: float
    eye_height: float
    eye_size: float
    nose_length: float
    nose_half_width: float
    nose_gap: float  # from the eye line to the nose tip, beyond nose_length
    mouth_width: float
    mouth_gap: float  # from the nose tip to the mouth
    hair_style: str
    long_hair_bottom: float
    beard: bool


def _proportions(style: FaceStyle, t: float) -> _Proportions:
    """``style``'s geometry at childhood ``t``: a child's head is rounder with the features in
    its lower half, eyes large and low, nose and mouth small."""
    return _Proportions(
        aspect=style.aspect * (1 - 0.2 * t),
        eye_height=style.eye_height * (1 - 0.8 * t) - 0.06 * t,
        eye_size=style.eye_size * (1 + 0.35 * t),
        nose_length=style.nose_length * (1 - 0.5 * t),
        nose_half_width=0.12 * (1 - 0.35 * t),
        nose_gap=0.12 * (1 - 0.4 * t),
        mouth_width=style.mouth_width * (1 - 0.3 * t),
        mouth_gap=0.25 * (1 - 0.3 * t),
        hair_style="short" if style.hair_style == "bald" and t > 0 else style.hair_style,
        long_hair_bottom=1.25 - 0.55 * t,
        beard=style.beard and t == 0,
    )


def face_aspect(style: FaceStyle, age: int) -> float:
    """The height / width of ``style``'s face as ``draw_face`` draws it at ``age``."""
    return _proportions(style, childhood(age)).aspect


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
    age: int | None = None,
) -> FaceTruth:
    """Paint one face of ``style`` onto ``image`` and return where it is.

    ``half_width`` is the face's half-width in pixels; ``angle_deg`` rotates it in the image
    plane (positive is counter-clockwise on screen); ``smile`` in [-1, 1] bends the mouth;
    ``light`` scales every colour of the face, as a change of exposure would; ``age`` in years
    (default: the identity's own, ``style.age``) moves the proportions towards a child's below
    ``ADULT_AGE`` and is what the truth records.
    """
    age = style.age if age is None else age
    if age < 0:
        raise ValueError(f"age must be at least 0, got {age}")
    shape = _proportions(style, childhood(age))
    draw = ImageDraw.Draw(image)
    w = half_width
    h = w * shape.aspect
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
    if shape.hair_style == "long":
        bottom = shape.long_hair_bottom
        polygon(np.array([[-1.25, -0.55], [1.25, -0.55], [1.3, bottom], [-1.3, bottom]]), _shade(hair, 0.9))
    if shape.hair_style != "bald":
        polygon(_ellipse(0, -0.18, 1.12, 0.98, math.pi, 2 * math.pi), hair)
    # Ears, then the face over them.
    for side in (-1, 1):
        polygon(_ellipse(side * 0.98, 0.02, 0.16, 0.22), _shade(style.skin, 0.93))
    polygon(_ellipse(0, 0, 1.0, 1.0, n=64), style.skin)
    if shape.hair_style in ("short", "long"):
        polygon(_ellipse(0, -0.62, 0.92, 0.38, math.pi, 2 * math.pi), hair)
    elif shape.hair_style == "bangs":
        polygon(np.array([[-0.9, -0.55], [-0.75, -0.2], [0.75, -0.2], [0.9, -0.55], [0, -1.0]]), hair)
    if shape.beard:
        polygon(_ellipse(0, 0.55, 0.78, 0.45, 0, math.pi), _shade(hair, 0.85))

    eye_y = -shape.eye_height
    eye_r = shape.eye_size
    eye_ry = eye_r / shape.aspect
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

    nose_tip = (0.0, eye_y + shape.nose_length + shape.nose_gap)
    nose = [[0, eye_y + 0.1], [shape.nose_half_width, nose_tip[1]], [-shape.nose_half_width, nose_tip[1]]]
    polygon(np.array(nose), _shade(style.skin, 0.8))

    mouth_y = min(0.62, nose_tip[1] + shape.mouth_gap)
    mw = shape.mouth_width
    curve = np.linspace(-1, 1, 16)
    upper = np.stack([curve * mw, mouth_y - smile * 0.06 * (1 - curve**2) * -1 - 0.02], axis=1)
    lower = np.stack([curve[::-1] * mw, mouth_y + 0.05 + smile * 0.1 * (1 - curve[::-1] ** 2)], axis=1)
    polygon(np.concatenate([upper, lower]), (150, 50, 60))
    if style.mark is not None:
        polygon(_ellipse(style.mark[0], style.mark[1], 0.05, 0.05 / shape.aspect), (60, 35, 25))

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
        age=int(age),
        male=style.male,
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
    style: FaceStyle, size: int, rng: np.random.Generator, smile: float | None = None, age: int | None = None
) -> tuple[Image.Image, FaceTruth]:
    """One centred head-and-shoulders portrait with small pose, light and expression jitter;
    ``age`` as in ``draw_face`` (it draws nothing more from ``rng``)."""
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
        age=age,
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
