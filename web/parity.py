"""Test photos of every decoding path, shared by the Python edge and the web page (the browser tests and
``bench web --parity`` run both on the same files): a real photo (matplotlib's sample Grace Hopper portrait,
512x600 JPEG) in the forms phones and cameras produce, and images built to stress each step (noise for the resize,
an alpha grid for the composite). The 1/8 draft is covered by the page's own decode probes (web/build.py).

    Real/orient-<1..8>.jpg   the photo stored turned/mirrored, with the EXIF orientation that undoes it
    Real/xmp-orient-6.jpg    orientation given only in the XMP packet (Pillow reads it too)
    Real/phone-12mp.jpg      4032x3024 with orientation 6 (a phone's portrait photo): the draft decodes it at 1/4
    Real/phone-12mp-8.jpg    the same stored the other way, orientation 8
    Real/phone-12mp-upright.jpg   the same already upright (3024x4032) with no tag, as iOS may hand it over
    Real/draft-4.jpg, draft-2.jpg   2700x2100 and 1400x1300: both drafted at 1/2
    Real/progressive.jpg, s444.jpg, gray.jpg, cmyk.jpg, burst-mpo.jpg (two frames: Pillow opens it as MPO: no draft)
    Real/alpha.png, palette.png, orient-6.png (eXIf chunk), photo.gif, photo.bmp, lossy.webp, lossless.webp
    Real/p3.jpg, p3.png, p3.webp   a Display P3 colour profile, as iPhones embed (Pillow ignores it; WebKit applied it)
    Stress/noise-173x311.png, noise-1001x999.png, alpha-grid.png (every value x alpha pair), gray16.png
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# Pillow's transposes whose inverse the orientation tag asks for: the file stores the upright photo turned.
STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
          7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def real_photo() -> Image.Image:
    import matplotlib

    return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _xmp_jpeg(img: Image.Image, orientation: int) -> bytes:
    """A JPEG whose only orientation is ``tiff:Orientation`` in an XMP APP1 segment."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    packet = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF>'
              b'</x:xmpmeta>' % orientation)
    payload = b"http://ns.adobe.com/xap/1.0/\0" + packet
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + segment + data[2:]


def display_p3_profile() -> bytes:
    """An ICC profile with Display P3's primaries (D50-adapted) and sRGB's curves: Pillow's sRGB profile with its
    colorants replaced (and its profile id cleared, which then means "not computed")."""
    import struct

    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[84:100] = bytes(16)
    primaries = {b"rXYZ": (0.5151, 0.2412, -0.0011), b"gXYZ": (0.2919, 0.6922, 0.0419),
                 b"bXYZ": (0.1572, 0.0666, 0.7841)}
    for i in range(struct.unpack(">I", icc[128:132])[0]):
        sig, off, _ = struct.unpack(">4sII", icc[132 + 12 * i:144 + 12 * i])
        if sig in primaries:
            icc[off + 8:off + 20] = struct.pack(">3i", *(round(v * 65536) for v in primaries[sig]))
    return bytes(icc)


def parity_photos(root: Path) -> Path:
    """Write the set under ``root`` (``Real/``, ``Stress/``); returns ``root``."""
    real, stress = root / "Real", root / "Stress"
    real.mkdir(parents=True)
    stress.mkdir()
    photo = real_photo()
    for orientation, method in STORED.items():
        stored = photo if method is None else photo.transpose(method)
        stored.save(real / f"orient-{orientation}.jpg", quality=90, exif=_exif(orientation))
    (real / "xmp-orient-6.jpg").write_bytes(_xmp_jpeg(photo.transpose(STORED[6]), 6))
    upright_big = photo.resize((3024, 4032), Image.BILINEAR)
    upright_big.transpose(STORED[6]).save(real / "phone-12mp.jpg", quality=92, exif=_exif(6))   # stored 4032x3024
    upright_big.transpose(STORED[8]).save(real / "phone-12mp-8.jpg", quality=92, exif=_exif(8))
    # What iOS may hand a file input instead: the pixels already turned upright, no orientation tag.
    upright_big.save(real / "phone-12mp-upright.jpg", quality=92)
    photo.resize((2700, 2100), Image.BILINEAR).save(real / "draft-4.jpg", quality=90)
    photo.resize((1400, 1300), Image.BILINEAR).save(real / "draft-2.jpg", quality=90)
    photo.save(real / "progressive.jpg", quality=85, progressive=True)
    photo.save(real / "s444.jpg", quality=95, subsampling=0)
    photo.convert("L").save(real / "gray.jpg", quality=90)
    photo.convert("CMYK").save(real / "cmyk.jpg", quality=90)
    photo.save(real / "burst-mpo.jpg", "MPO", save_all=True, append_images=[photo.transpose(STORED[3])], quality=90)
    rgba = photo.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[..., 3] = np.add.outer(np.arange(a.shape[0]) * 255 // a.shape[0], np.zeros(a.shape[1], int)).astype(np.uint8)
    Image.fromarray(a, "RGBA").save(real / "alpha.png")
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(real / "palette.png", transparency=0)
    photo.transpose(STORED[6]).save(real / "orient-6.png", exif=_exif(6))
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(real / "photo.gif")
    photo.save(real / "photo.bmp")
    photo.save(real / "lossy.webp", quality=80)
    photo.save(real / "lossless.webp", lossless=True)
    p3 = display_p3_profile()
    photo.save(real / "p3.jpg", quality=90, icc_profile=p3)
    photo.save(real / "p3.png", icc_profile=p3)
    photo.save(real / "p3.webp", quality=80, icc_profile=p3)
    rng = np.random.RandomState(3)
    for w, h in ((173, 311), (1001, 999)):
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(stress / f"noise-{w}x{h}.png")
    grid = np.zeros((256, 256, 4), np.uint8)
    grid[..., 0] = np.arange(256)[None, :]                 # every value ...
    grid[..., 1] = 255 - np.arange(256)[None, :]
    grid[..., 2] = 128
    grid[..., 3] = np.arange(256)[:, None]                 # ... under every alpha
    Image.fromarray(grid, "RGBA").save(stress / "alpha-grid.png")
    Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257 + 3)).save(stress / "gray16.png")
    return root
