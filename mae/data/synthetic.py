"""Built-in synthetic datasets ("shapes" and "shapes2"), generated offline with vectorised numpy.

Every image shows 1..N textured objects (shape families = classes) of random colour, scale, rotation and
aspect on a cluttered, textured background; later objects occlude earlier ones. Per image we produce:

* the RGB image (uint8, H×W×3),
* an image-level class label: the class of the object with the largest *visible* area,
* a semantic mask (0 = background, c+1 = class c, 255 = ignore: visible fragments too small to annotate),
* COCO instances (visible mask as RLE, tight bbox of that mask, area, category_id = c+1, iscrowd = 0).

Generation is deterministic: batch ``b`` of split ``s`` draws from ``np.random.default_rng([seed, s, b])``
with a fixed batch size per image size, so the same seed gives identical bytes on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray

# ----------------------------------------------------------------------------------------------------------
# shape families: functions of local coordinates (u, v), unit "radius", returning a boolean inside-mask


def _polygon(n: int, rot: float = 0.0) -> Callable[[Array, Array], Array]:
    sector = 2 * np.pi / n
    apothem = np.cos(np.pi / n)

    def inside(u: Array, v: Array) -> Array:
        r = np.hypot(u, v)
        t = np.mod(np.arctan2(v, u) + rot, sector) - sector / 2
        return r * np.cos(t) < apothem

    return inside


def _disk(u, v):
    return u * u + v * v < 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) < 0.8


def _star5(u, v):
    r = np.hypot(u, v)
    th = np.arctan2(v, u)
    return r < 0.52 + 0.48 * np.cos(5 * th)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au < 0.3) & (av < 0.95)) | ((av < 0.3) & (au < 0.95))


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 < 1.0) & (r2 > 0.36)


def _crescent(u, v):
    return (u * u + v * v < 1.0) & ((u - 0.45) ** 2 + v * v > 0.64)


def _ellipse(u, v):
    return u * u + (v / 0.42) ** 2 < 1.0


def _lshape(u, v):
    return ((u > -0.8) & (u < -0.2) & (np.abs(v) < 0.9)) | ((u > -0.8) & (u < 0.8) & (v > 0.3) & (v < 0.9))


def _heart(u, v):
    x, y = u * 1.15, -v * 1.15 + 0.15
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 < 0.0


def _diamond(u, v):
    return np.abs(u) / 0.6 + np.abs(v) < 1.0


def _arrow(u, v):
    head = (u > 0.1) & (np.abs(v) < (0.95 - u) * 0.95)
    shaft = (u > -0.95) & (u <= 0.1) & (np.abs(v) < 0.25)
    return head | shaft


def _chevron(u, v):
    return (np.abs(v + 0.5 - np.abs(u) * 1.1) < 0.3) & (np.abs(u) < 0.9)


def _tshape(u, v):
    return ((np.abs(u) < 0.9) & (v < -0.45) & (v > -0.95)) | ((np.abs(u) < 0.25) & (v >= -0.45) & (v < 0.95))


def _hourglass(u, v):
    return (np.abs(u) < np.abs(v) * 0.95 + 0.05) & (np.abs(v) < 0.9)


def _semicircle(u, v):
    return (u * u + (v + 0.35) ** 2 < 1.0) & (v > -0.35) & (v < 0.65)


def _gear(u, v):
    r = np.hypot(u, v)
    th = np.arctan2(v, u)
    return r < np.where(np.cos(8 * th) > 0, 1.0, 0.7)


def _frame(u, v):
    m = np.maximum(np.abs(u), np.abs(v))
    return (m < 0.85) & (m > 0.5)


def _bars(u, v):
    av = np.abs(v)
    return (np.abs(u) < 0.85) & (av > 0.22) & (av < 0.62)


FAMILIES: dict[str, list[tuple[str, Callable[[Array, Array], Array]]]] = {
    "shapes": [
        ("disk", _disk),
        ("square", _square),
        ("triangle", _polygon(3, np.pi / 2)),
        ("star", _star5),
        ("cross", _cross),
        ("ring", _ring),
        ("crescent", _crescent),
        ("ellipse", _ellipse),
        ("lshape", _lshape),
        ("heart", _heart),
    ],
    "shapes2": [
        ("hexagon", _polygon(6)),
        ("diamond", _diamond),
        ("arrow", _arrow),
        ("chevron", _chevron),
        ("tshape", _tshape),
        ("hourglass", _hourglass),
        ("semicircle", _semicircle),
        ("gear", _gear),
        ("frame", _frame),
        ("bars", _bars),
    ],
}


@dataclass(frozen=True)
class Style:
    """Image statistics of one built-in domain."""

    max_objects: int = 4
    main_scale: tuple[float, float] = (0.24, 0.40)  # radius of the main object, fraction of the image side
    other_scale: tuple[float, float] = (0.10, 0.24)
    n_clutter: tuple[int, int] = (1, 5)  # background distractors (not annotated)
    palette: str = "saturated"  # object colours: saturated | pastel
    background: str = "noise"  # noise | stripes
    noise_sigma: float = 0.04
    background_gain: float = 1.0  # brightness of the background field
    textures: tuple[int, ...] = (0, 1, 2, 3, 4)  # 0 solid 1 stripes 2 checker 3 radial 4 speckle


STYLES: dict[str, Style] = {
    "shapes": Style(),
    "shapes2": Style(
        max_objects=5,
        main_scale=(0.22, 0.36),
        other_scale=(0.09, 0.22),
        n_clutter=(2, 6),
        palette="pastel",
        background="stripes",
        noise_sigma=0.05,
        background_gain=0.6,
        textures=(0, 1, 3, 4),
    ),
}


def class_names(kind: str, num_classes: int | None = None) -> list[str]:
    fams = FAMILIES[kind]
    n = len(fams) if num_classes is None else num_classes
    return [name for name, _ in fams[:n]]


# ----------------------------------------------------------------------------------------------------------


def batch_size_for(img_size: int) -> int:
    """Images per generation batch: fixed for an image size (part of the determinism contract)."""
    return int(max(4, min(512, (1 << 19) // (img_size * img_size))))


def _interp_matrix(out: int, grid: int) -> Array:
    """(out, grid) linear-interpolation weights (align corners), rows sum to 1."""
    pos = (np.arange(out) + 0.5) / out * (grid - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    frac = pos - lo
    m = np.zeros((out, grid), np.float32)
    m[np.arange(out), lo] = 1 - frac
    m[np.arange(out), lo + 1] += frac
    return m


def _smooth_noise(rng: np.random.Generator, b: int, size: int, grid: int, channels: int) -> Array:
    g = rng.random((b, grid, grid, channels), dtype=np.float32)
    m = _interp_matrix(size, grid)
    return np.einsum("hi,bijc,wj->bhwc", m, g, m, optimize=True)


def _colours(rng: np.random.Generator, n: int, palette: str) -> Array:
    c = rng.random((n, 3), dtype=np.float32)
    if palette == "pastel":
        c = 0.45 + 0.5 * c
    else:  # saturated: push one channel up and one down
        hi = rng.integers(0, 3, n)
        lo = (hi + rng.integers(1, 3, n)) % 3
        c[np.arange(n), hi] = 0.7 + 0.3 * c[np.arange(n), hi]
        c[np.arange(n), lo] = 0.3 * c[np.arange(n), lo]
    return c


def _texture(rng: np.random.Generator, kinds: Array, u: Array, v: Array, speckle: Array) -> Array:
    """Texture field t in [0,1] (B,H,W) in the object's local frame; kinds (B,) picks the pattern."""
    b = u.shape[0]
    freq = rng.uniform(2.0, 5.0, (b, 1, 1)).astype(np.float32)
    phi = rng.uniform(0, np.pi, (b, 1, 1)).astype(np.float32)
    t = np.zeros_like(u)
    stripes = 0.5 + 0.5 * np.sin(freq * np.pi * (u * np.cos(phi) + v * np.sin(phi)))
    checker = (np.sin(freq * np.pi * u) * np.sin(freq * np.pi * v) > 0).astype(np.float32)
    radial = np.clip(np.hypot(u, v), 0, 1)
    k = kinds[:, None, None]
    t = np.where(k == 1, stripes, t)
    t = np.where(k == 2, checker, t)
    t = np.where(k == 3, radial, t)
    t = np.where(k == 4, speckle, t)
    return t


def _segment_dist(x: Array, y: Array, p0: Array, p1: Array) -> Array:
    """Distance of pixel centres (H,W grids) to segments p0→p1 ((B,2) each) → (B,H,W)."""
    d = p1 - p0
    dd = np.maximum((d * d).sum(1), 1e-6)[:, None, None]
    px = x[None] - p0[:, 0, None, None]
    py = y[None] - p0[:, 1, None, None]
    t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / dd, 0, 1)
    ex = px - t * d[:, 0, None, None]
    ey = py - t * d[:, 1, None, None]
    return np.sqrt(ex * ex + ey * ey)


@dataclass
class Batch:
    images: Array  # (B,H,W,3) uint8
    labels: Array  # (B,) int64
    semseg: Array  # (B,H,W) uint8
    instances: list[list[dict]] = field(default_factory=list)  # per image: {category_id, rle, bbox, area}


# Named difficulties of a built-in domain (docs/calibration.md measures each): ``hard`` is the domain's style as
# defined above (up to 4-5 occluding objects in clutter: the committed studies before the calibration), ``easy``
# one object without distractors, ``clean`` also plain or striped fills on a dimmer background (the studies' data:
# a small CNN learns it, logistic regression on pixels does not, a ViT from scratch is far behind the CNN).
DIFFICULTIES = ("clean", "easy", "hard")


def make_style(
    kind: str, max_objects: int | None = None, max_clutter: int | None = None, difficulty: str = "hard"
) -> Style:
    """The domain's style at a named difficulty, optionally with fewer/more objects or distractors per image."""
    import dataclasses

    style = STYLES[kind]
    if difficulty in ("easy", "clean"):
        style = dataclasses.replace(style, max_objects=1, n_clutter=(0, 0))
    if difficulty == "clean":
        solid_or_stripes = tuple(t for t in style.textures if t in (0, 1))
        style = dataclasses.replace(style, textures=solid_or_stripes, background_gain=0.6 * style.background_gain)
    if max_objects is not None:
        style = dataclasses.replace(style, max_objects=int(max_objects))
    if max_clutter is not None:
        style = dataclasses.replace(style, n_clutter=(min(style.n_clutter[0], int(max_clutter)), int(max_clutter)))
    return style


def generate_batch(
    rng: np.random.Generator,
    b: int,
    img_size: int,
    kind: str = "shapes",
    num_classes: int | None = None,
    style: Style | None = None,
) -> Batch:
    """Render ``b`` images of the built-in domain ``kind`` (``style`` overrides the domain's default)."""
    style = STYLES[kind] if style is None else style
    fams = FAMILIES[kind]
    n_cls = len(fams) if num_classes is None else num_classes
    s = img_size
    ys, xs = np.meshgrid(np.arange(s, dtype=np.float32) + 0.5, np.arange(s, dtype=np.float32) + 0.5, indexing="ij")
    img = _background(rng, b, s, style, xs, ys)
    img, obj_id, obj_cls, n_obj = _objects(rng, img, b, s, style, fams, n_cls, xs, ys)
    img += rng.normal(0, style.noise_sigma, img.shape).astype(np.float32)
    images = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    semseg, labels, instances = _annotations(obj_id, obj_cls, n_obj, style.max_objects, s)
    return Batch(images=images, labels=labels, semseg=semseg, instances=instances)


def _background(rng: np.random.Generator, b: int, s: int, style: Style, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Low-frequency two-colour field + pattern + distractors (segments and blobs): float (b, s, s, 3)."""
    c_a = _colours(rng, b, "saturated")[:, None, None, :]
    c_b = rng.random((b, 1, 1, 3), dtype=np.float32)
    mix = _smooth_noise(rng, b, s, 4, 1)
    img = (c_a * mix + c_b * (1 - mix)) * style.background_gain
    img += 0.35 * (_smooth_noise(rng, b, s, 9, 3) - 0.5)
    pat_f = rng.uniform(0.1, 0.5, (b, 1, 1)).astype(np.float32)
    pat_phi = rng.uniform(0, np.pi, (b, 1, 1)).astype(np.float32)
    pat_amp = rng.uniform(0.0, 0.3, (b, 1, 1, 1)).astype(np.float32)
    along = xs[None] * np.cos(pat_phi) + ys[None] * np.sin(pat_phi)
    if style.background == "stripes":
        pattern = (np.sin(pat_f * along * 2.0) > 0).astype(np.float32)
    else:
        pattern = np.sin(pat_f * along) * np.sin(pat_f * (ys[None] * np.cos(pat_phi) - xs[None] * np.sin(pat_phi)))
    img += pat_amp * (pattern[..., None] - 0.5)
    n_clutter = rng.integers(style.n_clutter[0], style.n_clutter[1] + 1, b)
    for k in range(style.n_clutter[1]):
        active = (k < n_clutter)[:, None, None]
        p0 = rng.uniform(0, s, (b, 2)).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi, b)
        length = rng.uniform(0.15, 0.6, b) * s
        p1 = p0 + np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32) * length[:, None]
        width = rng.uniform(0.02, 0.06, (b, 1, 1)).astype(np.float32) * s
        blob = rng.random(b) < 0.35  # a short thick segment is a blob
        width = np.where(blob[:, None, None], width * 2.0, width)
        p1 = np.where(blob[:, None], p0 + (p1 - p0) * 0.15, p1)
        m = (_segment_dist(xs, ys, p0, p1) < width) & active
        col = rng.random((b, 1, 1, 3), dtype=np.float32)
        img = np.where(m[..., None], col, img)
    return img


def _objects(
    rng: np.random.Generator,
    img: np.ndarray,
    b: int,
    s: int,
    style: Style,
    fams,
    n_cls: int,
    xs: np.ndarray,
    ys: np.ndarray,
):
    """Paint up to ``style.max_objects`` textured objects; returns (img, object id per pixel, classes, counts)."""
    n_obj = rng.integers(1, style.max_objects + 1, b)
    obj_id = np.full((b, s, s), -1, np.int8)
    obj_cls = rng.integers(0, n_cls, (b, style.max_objects))
    speckle = _smooth_noise(rng, b, s, max(4, s // 3), 1)[..., 0]
    speckle = (speckle > 0.5).astype(np.float32)
    for k in range(style.max_objects):
        active = k < n_obj
        lo, hi = style.main_scale if k == 0 else style.other_scale
        rad = rng.uniform(lo, hi, b).astype(np.float32) * s
        if k == 0:
            cxy = rng.uniform(0.3, 0.7, (b, 2)).astype(np.float32) * s
        else:
            cxy = rng.uniform(0.08, 0.92, (b, 2)).astype(np.float32) * s
        theta = rng.uniform(0, 2 * np.pi, b).astype(np.float32)
        aspect = rng.uniform(0.8, 1.25, b).astype(np.float32)
        dx = xs[None] - cxy[:, 0, None, None]
        dy = ys[None] - cxy[:, 1, None, None]
        ct, st = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        u = (dx * ct + dy * st) / (rad * aspect)[:, None, None]
        v = (-dx * st + dy * ct) / (rad / aspect)[:, None, None]
        inside = np.zeros((b, s, s), bool)
        for c in range(n_cls):
            sel = np.nonzero(active & (obj_cls[:, k] == c))[0]
            if sel.size:
                inside[sel] = fams[c][1](u[sel], v[sel])
        tex_kind = np.asarray(style.textures)[rng.integers(0, len(style.textures), b)]
        t = _texture(rng, tex_kind, u, v, speckle)
        col1 = _colours(rng, b, style.palette)
        col2 = np.clip(col1 + rng.uniform(-0.45, 0.45, (b, 3)).astype(np.float32), 0, 1)
        shade = 1.0 - 0.25 * np.clip(u * 0.5 + v * 0.5, -1, 1)[..., None] * rng.uniform(0, 1, (b, 1, 1, 1))
        fill = (col1[:, None, None, :] * (1 - t[..., None]) + col2[:, None, None, :] * t[..., None]) * shade
        img = np.where(inside[..., None], fill, img)
        obj_id[inside] = k
    return img, obj_id, obj_cls, n_obj


def _annotations(obj_id: np.ndarray, obj_cls: np.ndarray, n_obj: np.ndarray, max_objects: int, s: int):
    """Semantic masks, image labels (the largest visible object) and COCO instances from the visible masks."""
    from pycocotools import mask as mask_utils

    b = obj_id.shape[0]
    min_area = max(4, int(round(0.004 * s * s)))
    semseg = np.zeros((b, s, s), np.uint8)
    labels = np.zeros(b, np.int64)
    instances: list[list[dict]] = []
    areas = np.stack([(obj_id == k).sum((1, 2)) for k in range(max_objects)], 1)  # (B,K)
    for i in range(b):
        anns = []
        best = int(np.argmax(areas[i]))
        labels[i] = obj_cls[i, best]
        for k in range(int(n_obj[i])):
            a = int(areas[i, k])
            if a == 0:
                continue
            m = obj_id[i] == k
            if a < min_area:
                semseg[i][m] = 255
                continue
            c = int(obj_cls[i, k])
            semseg[i][m] = c + 1
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            bbox = [float(x) for x in mask_utils.toBbox(rle)]
            anns.append(
                {
                    "category_id": c + 1,
                    "segmentation": {"size": [s, s], "counts": rle["counts"].decode("ascii")},
                    "bbox": bbox,
                    "area": float(a),
                    "iscrowd": 0,
                }
            )
        instances.append(anns)
    return semseg, labels, instances
