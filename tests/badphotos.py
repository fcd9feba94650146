"""Test photos of every troublesome kind, shared by the edge and the server-side featurization tests."""
from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def bad_photo_folder(root: Path, photos: Path, *, local_only: bool = True) -> Path:
    """One folder with every kind of troublesome photo the issues list, next to a few good ones.

    ``local_only``: also a dangling symlink (unreadable) and a non-UTF-8 file name, which only a local
    file system can hold (S3 keys are UTF-8).
    """
    src = sorted((photos / "Banana").glob("*.jpg"))
    d = root / "Mixed"
    d.mkdir(parents=True)
    good = Image.open(src[0]).convert("RGB")
    shutil.copy(src[0], d / "good.jpg")
    shutil.copy(src[0], d / "same photo, other name.jpg")            # duplicate
    (d / "zero.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(src[1].read_bytes()[:400])
    (d / "text.jpg").write_text("this is not a photo")
    rgba = good.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(d / "alpha.png")
    good.convert("L").save(d / "gray.jpg")
    good.convert("L").save(d / "gray.png")
    good.convert("CMYK").save(d / "cmyk.jpg")
    arr16 = (np.asarray(good.convert("L"), np.uint16) * 257)
    Image.fromarray(arr16).save(d / "sixteen.png")
    # EXIF-rotated: pixels stored turned 90 degrees, orientation tag 6 says "rotate back".  Lossless
    # PNG on both sides, so the only difference is the orientation handling.
    upright = Image.open(src[2]).convert("RGB")
    upright.save(d / "upright.png")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(d / "rotated.png", exif=exif.tobytes())
    # Decompression bomb: a PNG header that claims 40000 x 40000 pixels.
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, "PNG")
    data = bytearray(bomb.getvalue())
    data[16:24] = struct.pack(">II", 40000, 40000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep the IHDR chunk's CRC valid
    (d / "bomb.png").write_bytes(bytes(data))
    if local_only:
        os.symlink(d / "does-not-exist.jpg", d / "unreadable.jpg")
        shutil.copy(src[3], os.fsencode(str(d)) + b"/caf\xe9-latin1.jpg")
    shutil.copy(src[4], d / ("long-" + "x" * 200 + ".jpg"))
    (d / "notes.txt").write_text("skipped by extension")
    return root
