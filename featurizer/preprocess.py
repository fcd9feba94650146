"""Photo decoding and the model's preprocessing, defined once for the edge, the cloud and the export.

The steps (recorded verbatim in every model card as :data:`PREPROCESSING`):

1. refuse photos over ``max_pixels`` from the header alone (decompression bombs are never decoded);
2. for JPEG, let the decoder downscale by a power of two while staying >= 4x the model size (``draft``:
   a 12 MP photo decodes at 1/4; at 1/8, its vector moved by cosine 0.0015 from the full decode's, now
   0.0003, so the same photo as JPEG or as HEIC (no such shortcut) gives the same vector within 0.0005);
3. apply the EXIF orientation;
4. convert to RGB: alpha is composited on white (the fruit photos have white backgrounds), palette,
   grayscale and CMYK are converted, 16-bit images are scaled to 8 bit;
5. crop the largest centred square, resize it to ``size`` x ``size`` with Pillow's bilinear filter;
6. scale to [-1, 1] as ``x / 127.5 - 1`` (MobileNetV2's ``preprocess_input``), float32, NHWC.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

PREPROCESSING = {
    "version": 2,
    "decode": "Pillow (HEIC/HEIF through pi-heif); JPEG draft (power-of-two downscale, never below 4x the model "
              "size); EXIF orientation applied",
    "color": "RGB; alpha composited on white; grayscale, palette and CMYK converted; 16-bit scaled to 8-bit",
    "crop": "largest centred square",
    "resize": "Pillow BILINEAR to input_size x input_size",
    "scale": "x / 127.5 - 1 (range [-1, 1]), float32",
    "layout": "NHWC, batch 1",
}
DRAFT_FACTOR = 4                  # JPEG decoded at >= 4x the model size (see step 2)
DEFAULT_MAX_PIXELS = 120_000_000  # a 108 MP phone photo passes; bigger headers are refused unread
MAX_PHOTO_BYTES = 64 * 2**20      # a photo file's bytes at most (a 108 MP JPEG is ~30 MB): larger files are not read
# Photo formats: what phones and cameras save (HEIC is an iPhone camera's default; AVIF newer Androids').
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".gif")

LAB_FILM = "r_"   # the Fruits-360 film a lab test keeps and its training drops


def film_split(folder: str | os.PathLike, film: str = LAB_FILM, test: bool = False):
    """Which photos of a folder a film-disjoint split keeps, by file name (None: all). Fruits-360's photos are frames
    of films of each fruit turning (``N_100.jpg``, ``r_N_100.jpg``, ``r2_N_100.jpg``: three films) and its Test frames
    are other frames of Training's films: in a Fruits-360 folder (``fruits360/...``), training drops the frames of
    ``film`` and the test keeps only them, so no film is on both sides. Other folders (the shop photos: the dataset's
    own train and val splits) are kept whole."""
    if not film or not os.path.basename(os.path.dirname(os.path.abspath(folder))).startswith("fruits360"):
        return None
    return (lambda name: name.startswith(film)) if test else (lambda name: not name.startswith(film))


# Known image formats that are not photos: refused with a reason (never skipped silently).
NOT_PHOTOS = {".svg": "an SVG is a vector drawing, not a photo: export it as JPEG or PNG",
              ".svgz": "an SVG is a vector drawing, not a photo: export it as JPEG or PNG",
              ".pdf": "a PDF is a document, not a photo"}


def _register_heif() -> str | None:
    """Let Pillow open HEIC/HEIF: the decode-only ``pi-heif`` (what the edge and EMR groups install), or
    ``pillow-heif``. Returns the plugin's name, None when neither is installed."""
    for module in ("pi_heif", "pillow_heif"):
        try:
            plugin = __import__(module)
        except ImportError:
            continue
        plugin.register_heif_opener()
        return module
    return None


HEIF_PLUGIN = _register_heif()


class ImageRejected(ValueError):
    """A photo that cannot be vectorized; the message is the reason that goes in the rejects list."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def read_photo(path: str | os.PathLike, *, max_bytes: int = MAX_PHOTO_BYTES) -> bytes:
    """A photo file's bytes, read only when it is a regular file (a link is followed to what it names) of at most
    ``max_bytes``: a link to ``/dev/zero``, a named pipe, a socket or a 4 GB file is refused from its metadata, unread,
    with the reason (:class:`ImageRejected`); it is opened without blocking, checked again once open (a file swapped
    in between is refused too) and never read past ``max_bytes``."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageRejected(f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(f"{_kind(info.st_mode)}, not a photo file: not read")
    if info.st_size > max_bytes:
        raise ImageRejected(f"{info.st_size:,} bytes, over the limit of {max_bytes:,} bytes for a photo: not read")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ImageRejected(f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ImageRejected(f"{_kind(mode)}, not a photo file: not read")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageRejected(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageRejected(f"over the limit of {max_bytes:,} bytes for a photo (it grew while read): not read")
    return data


def image_id(data: bytes) -> str:
    """The photo's identity in the data contract: sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int, int]:
    """Decode photo bytes to an upright RGB image (steps 1-4).  Raises :class:`ImageRejected`.

    Returns the image (possibly downscaled by ``draft``) and the width and height of the upright photo
    at full size.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit (max_pixels) decides, from the header; Pillow's warning at 89 MP would refuse the
            # 108 MP photos some phones take. Its hard error (2x that) still stops anything larger unread.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(f"{width}x{height} = {width * height} pixels is over the limit of "
                                    f"{max_pixels} (decompression bomb?); not decoded")
            if getattr(img, "n_frames", 1) > 1 and img.format in ("GIF", "PNG", "WEBP"):
                raise ImageRejected(f"an animation ({img.format}, {img.n_frames} frames), not a photo")
            if img.format == "JPEG":
                img.draft("RGB", (DRAFT_FACTOR * size, DRAFT_FACTOR * size))
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc") and HEIF_PLUGIN is None:
            raise ImageRejected("a HEIC photo, and no HEIF decoder is installed: pip install pi-heif") from None
        raise ImageRejected("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"cannot decode: {exc}") from None
    try:
        orientation = img.getexif().get(0x0112, 1)
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a corrupt EXIF block must not kill the batch
        raise ImageRejected(f"bad EXIF orientation data: {exc}") from None
    if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides
        width, height = height, width
    return to_rgb(img), width, height


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (step 4)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def to_input(img: Image.Image, size: int) -> np.ndarray:
    """Steps 5-6: centred square crop, bilinear resize, scale to [-1, 1]; returns (size, size, 3) float32."""
    width, height = img.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    return arr * np.float32(1.0 / 127.5) - np.float32(1.0)


def warm_up() -> None:
    """Run once on the calling thread, before threads decode photos: Pillow imports its format plugins, its EXIF
    reader and its encoders on first use, and threads importing modules for the first time at the same moment can
    deadlock on Python's per-module import locks. Decoding a small JPEG with an EXIF orientation, a PNG with alpha
    and a 16-bit PNG here imports all of it."""
    Image.init()
    samples = []
    for mode, fmt, kw in (("RGB", "JPEG", {"exif": _orientation_exif(6)}), ("RGBA", "PNG", {}), ("I;16", "PNG", {})):
        buf = io.BytesIO()
        Image.new(mode, (16, 12)).save(buf, fmt, **kw)
        samples.append(buf.getvalue())
    for data in samples:
        preprocess(data, 8)


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def preprocess(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Photo bytes -> (model input, width, height of the upright photo)."""
    img, width, height = decode(data, size, max_pixels=max_pixels)
    return to_input(img, size), width, height
