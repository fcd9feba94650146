"""Fruits-360-like synthetic photos: one fruit on a white background, 100x100 JPEG, a folder per class.

Layout as in Fruits-360: ``ROOT/Training/<Class>/<n>_100.jpg``.  The classes differ in colour, shape
and texture; each photo has its own rotation, scale, position and lighting.  Deterministic for a seed.
They are the export's default calibration and parity sets (no photos ship with the repository), and the
demo's, the tests' and the benchmarks' photos.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class FruitClass:
    name: str
    color: tuple[int, int, int]
    shape: str          # round | oval | long | pear | heart | cluster
    aspect: float       # height / width of the body
    texture: str        # smooth | dots | stripes | speckle | seeds | fuzz
    texture_color: tuple[int, int, int]
    stem: bool


CLASSES: tuple[FruitClass, ...] = (
    FruitClass("Apple Red", (180, 25, 30), "round", 0.95, "stripes", (230, 180, 60), True),
    FruitClass("Banana", (235, 205, 50), "long", 0.30, "speckle", (110, 80, 30), True),
    FruitClass("Orange", (245, 140, 20), "round", 1.0, "dots", (255, 175, 70), False),
    FruitClass("Lemon", (245, 230, 60), "oval", 0.75, "dots", (250, 245, 140), False),
    FruitClass("Lime", (90, 170, 40), "round", 0.9, "dots", (140, 200, 80), False),
    FruitClass("Kiwi", (120, 90, 50), "oval", 0.8, "fuzz", (80, 60, 30), False),
    FruitClass("Strawberry", (215, 30, 50), "heart", 1.1, "seeds", (250, 230, 120), True),
    FruitClass("Grape Blue", (70, 40, 110), "cluster", 1.2, "smooth", (120, 90, 160), True),
    FruitClass("Pear", (190, 200, 70), "pear", 1.35, "speckle", (140, 120, 50), True),
    FruitClass("Plum", (110, 30, 80), "oval", 0.9, "smooth", (160, 90, 140), True),
)


def class_names(n_classes: int | None = None) -> list[str]:
    return [c.name for c in CLASSES[: n_classes or len(CLASSES)]]


def _body_mask(fruit: FruitClass, big: int, rng: np.random.RandomState) -> Image.Image:
    """A white-on-black mask of the fruit's body, drawn at ``big`` px before rotation."""
    mask = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(mask)
    c = big / 2
    w = big * 0.36 * rng.uniform(0.85, 1.1)
    h = w * fruit.aspect * rng.uniform(0.92, 1.08)
    if fruit.shape in ("round", "oval"):
        d.ellipse([c - w, c - h, c + w, c + h], fill=255)
        if fruit.name == "Lemon":  # pointed ends
            d.polygon([(c - w - big * 0.06, c), (c - w + 4, c - h * 0.4), (c - w + 4, c + h * 0.4)], fill=255)
            d.polygon([(c + w + big * 0.06, c), (c + w - 4, c - h * 0.4), (c + w - 4, c + h * 0.4)], fill=255)
    elif fruit.shape == "long":  # a curved banana: a thick arc
        r = big * 0.42
        d.arc([c - r, c - r - big * 0.15, c + r, c + r - big * 0.15], 30, 150, fill=255, width=int(big * 0.17))
    elif fruit.shape == "pear":
        d.ellipse([c - w, c - h * 0.1, c + w, c + h * 0.75], fill=255)
        d.ellipse([c - w * 0.6, c - h * 0.75, c + w * 0.6, c + h * 0.2], fill=255)
    elif fruit.shape == "heart":  # strawberry: wide top, pointed bottom
        d.polygon([(c - w, c - h * 0.45), (c + w, c - h * 0.45), (c, c + h * 0.85)], fill=255)
        d.ellipse([c - w, c - h * 0.8, c + w, c - h * 0.05], fill=255)
    elif fruit.shape == "cluster":  # grapes: berries in a triangle
        r = big * 0.075
        rows = 5
        for i in range(rows):
            n = rows - i
            y = c - h * 0.55 + i * 1.75 * r
            for j in range(n):
                x = c + (j - (n - 1) / 2) * 1.9 * r + rng.uniform(-2, 2)
                d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return mask


def _texture(fruit: FruitClass, big: int, rng: np.random.RandomState) -> Image.Image:
    base = np.empty((big, big, 3), np.float32)
    base[:] = np.array(fruit.color, np.float32) * rng.uniform(0.9, 1.1, size=3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    tc = fruit.texture_color
    if fruit.texture == "dots":
        for _ in range(int(big * 2.2)):
            x, y = rng.uniform(0, big, size=2)
            r = rng.uniform(0.8, 2.0)
            d.ellipse([x - r, y - r, x + r, y + r], fill=tc)
    elif fruit.texture == "stripes":
        for _ in range(14):
            x = rng.uniform(0, big)
            d.line([(x, 0), (x + rng.uniform(-20, 20), big)], fill=tc, width=int(rng.uniform(1, 4)))
    elif fruit.texture == "speckle":
        for _ in range(int(big * 0.8)):
            x, y = rng.uniform(0, big, size=2)
            d.point([(x, y), (x + 1, y), (x, y + 1)], fill=tc)
    elif fruit.texture == "seeds":
        for _ in range(60):
            x, y = rng.uniform(0, big, size=2)
            d.ellipse([x - 1.6, y - 2.4, x + 1.6, y + 2.4], fill=tc)
    elif fruit.texture == "fuzz":
        arr = np.asarray(img, np.float32) + rng.normal(0, 28, size=(big, big, 1))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    # Shading: light from the upper left, so round bodies look round.
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    shade = 1.15 - 0.45 * np.hypot(xx - 0.35, yy - 0.35)
    arr = np.asarray(img, np.float32) * shade[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render(fruit: FruitClass, rng: np.random.RandomState, size: int = 100) -> Image.Image:
    """One photo of ``fruit``: rotation, scale, offset and lighting drawn from ``rng``."""
    big = size * 2
    mask = _body_mask(fruit, big, rng)
    body = _texture(fruit, big, rng)
    canvas = Image.new("RGB", (big, big), (255, 255, 255))
    canvas.paste(body, (0, 0), mask.filter(ImageFilter.GaussianBlur(1.2)))
    if fruit.stem:
        d = ImageDraw.Draw(canvas)
        top = int(np.argmax(np.asarray(mask).any(axis=1)))
        c = big / 2 + rng.uniform(-4, 4)
        d.line([(c, top + 6), (c + rng.uniform(-8, 8), top - big * 0.07)], fill=(90, 60, 25), width=5)
        if fruit.shape == "heart":
            d.polygon([(c - 22, top + 4), (c + 22, top + 4), (c, top + 16)], fill=(50, 140, 40))
    angle = rng.uniform(0, 360)
    canvas = canvas.rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255))
    scale = rng.uniform(0.8, 1.0)
    side = int(big * scale)
    canvas = canvas.resize((side, side), Image.LANCZOS)
    out = Image.new("RGB", (big, big), (255, 255, 255))
    off = big - side
    out.paste(canvas, (int(rng.uniform(0, off + 1)), int(rng.uniform(0, off + 1))))
    out = out.resize((size, size), Image.LANCZOS)
    # Lighting: overall gain and a colour cast, as under different lamps; the white stays near white.
    arr = np.asarray(out, np.float32)
    gain = rng.uniform(0.8, 1.1)
    cast = rng.uniform(0.94, 1.06, size=3)
    lit = 255 - (255 - arr) * gain
    lit = lit * cast * rng.uniform(0.93, 1.02)
    return Image.fromarray(np.clip(lit + rng.normal(0, 2.0, arr.shape), 0, 255).astype(np.uint8), "RGB")


def generate(root: str | Path, *, per_class: int = 100, n_classes: int = len(CLASSES), seed: int = 0,
             size: int = 100, split: str = "Training", quality: int = 95, progress: bool = False) -> Path:
    """Write ``per_class`` photos for each of the first ``n_classes`` classes; returns ``root/split``.

    >>> generate("/tmp/fruits", per_class=2, n_classes=3)   # doctest: +SKIP
    PosixPath('/tmp/fruits/Training')
    """
    if not 1 <= n_classes <= len(CLASSES):
        raise ValueError(f"n_classes={n_classes} must be between 1 and {len(CLASSES)}")
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be at least 1")
    out = Path(root) / split
    total = per_class * n_classes
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="generating photos", unit="img")
    for ci, fruit in enumerate(CLASSES[:n_classes]):
        folder = out / fruit.name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            rng = np.random.RandomState((seed * 1_000_003 + ci * 10_007 + n) % (2**32))
            render(fruit, rng, size).save(folder / f"{n}_{size}.jpg", quality=quality)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def phone_photo(rng: np.random.RandomState, fruit: FruitClass, width: int = 4000, height: int = 3000) -> Image.Image:
    """A large photo (12 MP by default) of one fruit: the 100 px render upscaled, plus sensor noise."""
    small = render(fruit, rng, size=400)
    side = min(width, height)
    img = small.resize((side, side), Image.BICUBIC)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(img, ((width - side) // 2, (height - side) // 2))
    noise = rng.normal(0, 3.0, (height // 8, width // 8, 3))
    noise = Image.fromarray(np.clip(128 + noise, 0, 255).astype(np.uint8)).resize((width, height))
    return Image.blend(canvas, noise, 0.04)

