"""Coherent group scenes of two or three demo people, with their ground truth.

Unlike ``render_group`` (faces in fixed tiles on a gradient), a scene is one picture: a wall and
a floor, people with bodies standing in a layout (``side_by_side``, ``staggered`` in two depths
with the back row smaller and higher, or a close ``huddle`` of overlapping shoulders), heads of
varied scale and in-plane tilt, and one light that shades every face, body and the room alike
and casts the people's soft shadows on the wall. Anyone can be drawn at another age
(``draw_face``'s age axis): a child is placed lower and has a smaller body for its head.

Faces never hide each other: a sampled layout is kept only when every face box lies inside the
image, no two face boxes overlap by more than ``MAX_BOX_OVERLAP`` of the smaller and at most
``MAX_HIDDEN`` of any face box is covered by people in front of it; otherwise it is sampled
again, and after ``ATTEMPTS`` tries a plain wide row (which always passes) is drawn. Everything
comes from the ``rng`` passed in, so a seed gives one scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from idglow.data.faces import Color, FaceStyle, FaceTruth, childhood, draw_face, face_aspect

LAYOUTS = ("side_by_side", "staggered", "huddle")
MAX_BOX_OVERLAP = 0.05
MAX_HIDDEN = 0.08
ATTEMPTS = 40
_FRONT_FACE_SCALE = {2: (0.095, 0.125), 3: (0.075, 0.095)}  # front adult face half-width / size
_DEPTH_SHRINK = 0.22  # the back row (depth 1) is this much smaller
_BACK_ROW_RISE = 0.9  # and stands this many front face half-widths higher
_CHILD_HEAD = 0.82  # a young child's head, relative to its adult head
_CHILD_DROP = 1.6  # how much lower a young child's head is, in front face half-widths


@dataclass(frozen=True)
class ScenePerson:
    """One person in a scene: ``identity`` is the index into the styles drawn."""

    identity: int
    face: FaceTruth
    head_center: tuple[float, float]
    half_width: float  # the face's, in pixels
    tilt_deg: float  # in-plane head rotation, counter-clockwise on screen
    depth: float  # 0 the front row, 1 the back row
    body_box: tuple[float, float, float, float]  # the body's extent, possibly beyond the image
    hidden_fraction: float  # share of the face box covered by people drawn in front


@dataclass(frozen=True)
class SceneTruth:
    """Everything a scene was drawn from; ``people`` follows the order of the styles."""

    size: int
    layout: str
    people: tuple[ScenePerson, ...]
    draw_order: tuple[int, ...]  # identities, back to front
    light_direction: tuple[float, float]  # unit vector towards the light, image axes (y down)
    light_strength: float  # how much brighter the lit side is than the middle
    exposure: float
    floor_y: float  # where the wall meets the floor, in pixels from the top


@dataclass(frozen=True)
class _Placement:
    identity: int
    center: tuple[float, float]
    half_width: float
    tilt_deg: float
    depth: float
    smile: float
    age: int
    shirt: Color
    trousers: Color


@dataclass(frozen=True)
class _Light:
    direction: np.ndarray  # (2,), unit
    strength: float
    exposure: float

    def shade(self, pixels: np.ndarray, center: tuple[float, float], radius: float) -> np.ndarray:
        """``pixels`` (H, W, 3) lit as a round object at ``center``: brighter on the side that
        faces the light, by the same rule for every face, body and the room."""
        height, width = pixels.shape[:2]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        along = ((xs - center[0]) * self.direction[0] + (ys - center[1]) * self.direction[1]) / radius
        factor = self.exposure * (1 + self.strength * np.clip(along, -1, 1))
        return pixels * factor[:, :, None]


def render_scene(
    styles: Sequence[FaceStyle], size: int, rng: np.random.Generator, ages: Sequence[int | None] | None = None
) -> tuple[Image.Image, list[FaceTruth], SceneTruth]:
    """A scene of the 2 or 3 people ``styles``, each at ``ages[i]`` (default: their own age).

    Returns the image, the face truths in the order of ``styles`` and the whole scene's truth.
    """
    n = len(styles)
    if n not in _FRONT_FACE_SCALE:
        raise ValueError(f"a scene holds 2 or 3 people, got {n}")
    ages = [None] * n if ages is None else list(ages)
    if len(ages) != n:
        raise ValueError(f"{len(ages)} ages for {n} people")
    resolved = [style.age if age is None else int(age) for style, age in zip(styles, ages, strict=True)]
    light = _Light(
        direction=_unit(float(rng.uniform(-75, 75))),
        strength=float(rng.uniform(0.1, 0.3)),
        exposure=float(rng.uniform(0.88, 1.1)),
    )
    floor_y = size * float(rng.uniform(0.68, 0.84))
    room = _room(size, floor_y, light, rng)
    for _ in range(ATTEMPTS):
        layout, placements = _sample_layout(resolved, size, rng)
        drawn = _draw_people(styles, placements, size, light)
        if drawn is not None:
            break
    else:
        layout, placements = "side_by_side", _plain_row(resolved, size, rng)
        drawn = _draw_people(styles, placements, size, light)
        if drawn is None:  # a guard: the plain row leaves wide gaps between people
            raise RuntimeError("the plain row of a scene failed its own checks")
    layers, people, order = drawn
    image = _compose(room, layers, people, size, light)
    truth = SceneTruth(
        size=size,
        layout=layout,
        people=tuple(people),
        draw_order=tuple(order),
        light_direction=(float(light.direction[0]), float(light.direction[1])),
        light_strength=light.strength,
        exposure=light.exposure,
        floor_y=floor_y,
    )
    return image, [person.face for person in people], truth


def _unit(angle_from_up_deg: float) -> np.ndarray:
    """The direction towards a light ``angle`` degrees right of straight up, in image axes."""
    angle = math.radians(angle_from_up_deg)
    return np.array([math.sin(angle), -math.cos(angle)])


def _color(rng: np.random.Generator, low: int, high: int) -> Color:
    return tuple(int(c) for c in rng.integers(low, high, size=3))  # type: ignore[return-value]


def _room(size: int, floor_y: float, light: _Light, rng: np.random.Generator) -> np.ndarray:
    """Wall above ``floor_y``, floor below, both lit from ``light``; (size, size, 3) floats."""
    wall, floor = np.array(_color(rng, 90, 225), float), np.array(_color(rng, 40, 170), float)
    ys = np.arange(size, dtype=np.float64)[:, None, None]
    on_floor = ys >= floor_y
    # The floor darkens towards the wall, the wall a little towards the ceiling.
    depth_ramp = np.where(on_floor, 0.8 + 0.2 * (ys - floor_y) / max(size - floor_y, 1.0), 0.92 + 0.08 * ys / floor_y)
    pixels = np.where(on_floor, floor, wall) * depth_ramp * np.ones((1, size, 1))
    pixels = light.shade(pixels, (size / 2, size / 2), size * 1.5)
    line = np.abs(ys[:, :, 0] - floor_y) < max(1.0, size / 160)
    pixels[np.broadcast_to(line, (size, size))] *= 0.8  # the skirting line
    return pixels + rng.normal(0, 3, size=pixels.shape)


def _sample_layout(ages: list[int], size: int, rng: np.random.Generator) -> tuple[str, list[_Placement]]:
    """A layout name and where each person stands, not yet checked."""
    n = len(ages)
    layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    front = size * float(rng.uniform(*_FRONT_FACE_SCALE[n]))
    if layout == "side_by_side":
        depths = [0.0] * n
        spacing = front * float(rng.uniform(2.55, 3.0))
    elif layout == "huddle":
        depths = [float(d) for d in rng.uniform(0, 0.3, size=n)]
        spacing = front * float(rng.uniform(2.1, 2.4))
    else:
        back_first = bool(rng.random() < 0.5)
        depths = [float((i + back_first) % 2) for i in range(n)]
        spacing = front * float(rng.uniform(1.55, 1.9))
    # Children take the front places: a child behind an adult would vanish behind them.
    by_youth = sorted(range(n), key=lambda i: (childhood(ages[i]) == 0, float(rng.random())))
    slots = sorted(range(n), key=lambda s: depths[s])
    slot_of = {person: slot for person, slot in zip(by_youth, slots, strict=True)}
    center_x = size * (0.5 + float(rng.uniform(-0.05, 0.05)))
    head_line = size * float(rng.uniform(0.36, 0.46))
    placements = []
    for person, age in enumerate(ages):
        slot = slot_of[person]
        depth = depths[slot]
        young = childhood(age)
        x = center_x + (slot - (n - 1) / 2) * spacing + front * float(rng.uniform(-0.12, 0.12))
        y = head_line - front * _BACK_ROW_RISE * depth + front * _CHILD_DROP * young
        y += front * float(rng.uniform(-0.15, 0.15))
        scale = (1 - _DEPTH_SHRINK * depth) * float(rng.uniform(0.93, 1.07)) * (1 - (1 - _CHILD_HEAD) * young)
        tilt = float(rng.uniform(-10, 10))
        if layout == "huddle":  # heads lean in towards the middle of the group (clockwise from the left)
            tilt += float(np.sign(slot - (n - 1) / 2)) * float(rng.uniform(3, 8))
        placements.append(
            _Placement(
                identity=person,
                center=(x, y),
                half_width=front * scale,
                tilt_deg=tilt,
                depth=depth,
                smile=float(rng.uniform(0.0, 1.0)),
                age=age,
                shirt=_color(rng, 20, 235),
                trousers=_color(rng, 20, 160),
            )
        )
    return layout, placements


def _plain_row(ages: list[int], size: int, rng: np.random.Generator) -> list[_Placement]:
    """The fallback: one row, upright, with a person's width of room each."""
    n = len(ages)
    front = size * 0.28 / n
    return [
        _Placement(
            identity=person,
            center=(size * (person + 0.5) / n, size * 0.4 + front * _CHILD_DROP * childhood(age)),
            half_width=front * (1 - (1 - _CHILD_HEAD) * childhood(age)),
            tilt_deg=0.0,
            depth=0.0,
            smile=float(rng.uniform(0.0, 1.0)),
            age=age,
            shirt=_color(rng, 20, 235),
            trousers=_color(rng, 20, 160),
        )
        for person, age in enumerate(ages)
    ]


@dataclass(frozen=True)
class _Layer:
    """One part of one person, drawn unlit on a clear canvas, and the centre its light uses."""

    pixels: np.ndarray  # (size, size, 4) uint8
    center: tuple[float, float]
    radius: float


def _draw_people(
    styles: Sequence[FaceStyle], placements: list[_Placement], size: int, light: _Light
) -> tuple[list[_Layer], list[ScenePerson], list[int]] | None:
    """Each person's body and head layers, back to front, with their truth; None when a face
    leaves the image, meets another face or is hidden."""
    order = [p.identity for p in sorted(placements, key=lambda p: (-p.depth, p.identity))]
    drawn: dict[int, tuple[_Layer, _Layer, FaceTruth, tuple[float, float, float, float]]] = {}
    for p in placements:
        body, body_box = _body_layer(p, styles[p.identity], size)
        head = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        face = draw_face(head, styles[p.identity], p.center, p.half_width, p.tilt_deg, p.smile, age=p.age)
        radius = max(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) / 2
        drawn[p.identity] = (body, _Layer(np.asarray(head), p.center, radius), face, body_box)
    boxes = [drawn[p.identity][2].bbox for p in placements]
    if any(not _inside(box, size) for box in boxes):
        return None
    for i in range(len(boxes)):
        for j in range(i):
            if _overlap(boxes[i], boxes[j]) > MAX_BOX_OVERLAP:
                return None
    people = {}
    for rank, identity in enumerate(order):
        in_front = [layer for later in order[rank + 1 :] for layer in drawn[later][:2]]
        hidden = _hidden(drawn[identity][2].bbox, in_front)
        if hidden > MAX_HIDDEN:
            return None
        p = placements[identity]
        people[identity] = ScenePerson(
            identity=identity,
            face=drawn[identity][2],
            head_center=(float(p.center[0]), float(p.center[1])),
            half_width=float(p.half_width),
            tilt_deg=p.tilt_deg,
            depth=p.depth,
            body_box=drawn[identity][3],
            hidden_fraction=hidden,
        )
    layers = [layer for identity in order for layer in drawn[identity][:2]]
    return layers, [people[i] for i in range(len(placements))], order


def _body_layer(p: _Placement, style: FaceStyle, size: int) -> tuple[_Layer, tuple[float, float, float, float]]:
    """Neck, shoulders, torso, arms and legs under the head, in head units that shift from an
    adult's (long body, broad shoulders) to a young child's (a body about three heads long)."""
    young = childhood(p.age)
    w = p.half_width
    h = w * face_aspect(style, p.age)
    cx, cy = p.center
    chin = cy + h
    head = 2 * h

    def lerp(adult: float, child: float) -> float:
        return adult + (child - adult) * young

    shoulder_y = chin + head * lerp(0.12, 0.06)
    hip_y = chin + head * lerp(2.7, 1.4)
    feet_y = chin + head * lerp(6.3, 3.2)
    shoulders = w * lerp(1.75, 1.25)
    hips = w * lerp(1.2, 0.95)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    neck = w * lerp(0.34, 0.3)
    draw.rectangle([cx - neck, cy + h * 0.5, cx + neck, shoulder_y + head * 0.1], fill=_tone(style.skin, 0.9))
    for side in (-1, 1):  # trouser legs, then the torso over their tops
        leg = [cx + side * hips * 0.05, hip_y - head * 0.1, cx + side * hips, feet_y]
        draw.rectangle([min(leg[0], leg[2]), leg[1], max(leg[0], leg[2]), leg[3]], fill=p.trousers)
    arm = w * lerp(0.45, 0.4)
    for side in (-1, 1):
        draw.polygon(
            [
                (cx + side * (shoulders - arm * 0.6), shoulder_y + head * 0.05),
                (cx + side * (shoulders + arm * 0.5), shoulder_y + head * 0.25),
                (cx + side * (hips + arm * 1.2), hip_y),
                (cx + side * (hips + arm * 0.2), hip_y),
            ],
            fill=_tone(p.shirt, 0.86),
        )
    corner = (shoulders - hips) * 0.8 + w * 0.2
    draw.ellipse([cx - shoulders, shoulder_y, cx + shoulders, shoulder_y + corner * 2], fill=p.shirt)
    torso = [
        (cx - shoulders, shoulder_y + corner),
        (cx + shoulders, shoulder_y + corner),
        (cx + hips, hip_y),
        (cx - hips, hip_y),
    ]
    draw.polygon(torso, fill=p.shirt)
    for side in (-1, 1):  # shoes, where they are in the picture
        foot = cx + side * hips * 0.55
        draw.ellipse(
            [foot - hips * 0.5, feet_y - head * 0.12, foot + hips * 0.5, feet_y + head * 0.08], fill=(30, 26, 24)
        )
    box = (cx - shoulders - arm * 0.5, cy + h * 0.5, cx + shoulders + arm * 0.5, feet_y + head * 0.08)
    center = (cx, (shoulder_y + hip_y) / 2)
    return _Layer(np.asarray(layer), center, shoulders), tuple(float(v) for v in box)  # type: ignore[return-value]


def _tone(color: Color, factor: float) -> Color:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color)  # type: ignore[return-value]


def _inside(box: tuple[float, float, float, float], size: int) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= size and box[3] <= size


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The two boxes' intersection as a share of the smaller one."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def _hidden(box: tuple[float, float, float, float], in_front: list[_Layer]) -> float:
    """The share of the face box's pixels that a layer drawn later covers."""
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = math.ceil(box[2]), math.ceil(box[3])
    if not in_front or x2 <= x1 or y2 <= y1:
        return 0.0
    covered = np.zeros((y2 - y1, x2 - x1), dtype=bool)
    for layer in in_front:
        covered |= layer.pixels[y1:y2, x1:x2, 3] > 0
    return float(covered.mean())


def _compose(
    room: np.ndarray, layers: list[_Layer], people: list[ScenePerson], size: int, light: _Light
) -> Image.Image:
    """The room, the people's soft shadows on it (away from the light), then the people lit."""
    silhouette = np.zeros((size, size), dtype=np.float64)
    for layer in layers:
        silhouette = np.maximum(silhouette, layer.pixels[:, :, 3] / 255.0)
    reach = float(np.mean([person.half_width for person in people]))
    shift = -light.direction * reach * 0.6
    shadow = Image.fromarray((silhouette * 255).astype(np.uint8), "L")
    shadow = shadow.transform(
        shadow.size, Image.Transform.AFFINE, (1, 0, -shift[0], 0, 1, -shift[1]), resample=Image.Resampling.BILINEAR
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(radius=max(1.0, reach * 0.25)))
    canvas = room * (1 - (0.2 + light.strength) * np.asarray(shadow, dtype=np.float64)[:, :, None] / 255.0)
    for layer in layers:
        lit = light.shade(layer.pixels[:, :, :3].astype(np.float64), layer.center, layer.radius)
        canvas = np.where(layer.pixels[:, :, 3:] > 0, lit, canvas)
    return Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8), "RGB")
