"""Build the web app: npm packages from ``package-lock.json`` (``npm ci``), bundles by ``node build.mjs``, and the
files that come from the Python side: the model and its card (the same ``.tflite`` bytes the edge and the job
load), and ``contract.json``, the contract the page follows, derived from :mod:`contract`.

A build is skipped when nothing it depends on changed (a stamp of the sources, the lock file and the model).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from contract import layout
from contract.card import FEATURE_DIM, load_model_card
from contract.errors import FruitsError
from contract.vectors import (CONTRACT_VERSION, META_CONTRACT, META_MODEL_NAME, META_MODEL_SHA256, VECTOR_COLUMNS,
                              parquet_options)

WEB = Path(__file__).resolve().parent
DEFAULT_DIST = WEB / "dist"
ROWS_PER_OBJECT = 5000    # as edge_client.upload.DEFAULT_ROWS_PER_OBJECT (web/ does not import the edge)


class WebBuildError(FruitsError):
    """The web app cannot be built here (no Node.js/npm, a failed install or bundle); says what to do."""


def _run(cmd: list[str], what: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise WebBuildError(f"{what} needs {cmd[0]} (Node.js 18+ with npm) on the PATH")
    proc = subprocess.run(cmd, cwd=WEB, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise WebBuildError(f"{what} failed ({' '.join(cmd)}): {' / '.join(tail)}")


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(WEB) if p.is_relative_to(WEB) else p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ensure_packages(quiet: bool = True) -> Path:
    """``npm ci`` when ``node_modules`` is missing or older than ``package-lock.json``; returns the folder."""
    modules = WEB / "node_modules"
    stamp = modules / ".fruits-lock"
    want = _digest([WEB / "package-lock.json", WEB / "package.json"])
    if stamp.is_file() and stamp.read_text() == want:
        return modules
    _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], "installing the web app's npm packages")
    stamp.write_text(want)
    return modules


def contract_spec(model_path: Path) -> dict:
    """What the page needs of the contract, from the Python definitions (keys as templates)."""
    from featurizer.preprocess import DEFAULT_MAX_PIXELS, DRAFT_FACTOR, IMAGE_EXTENSIONS, MAX_PHOTO_BYTES, NOT_PHOTOS
    from contract.labels import rules as label_rules
    from web.server import CONFIG_SCHEMA

    card = load_model_card(model_path)
    sha, pid, client, day = "f" * 64, "e" * 16, "CLIENT", "0001-01-01"
    vectors = layout.vectors_object_key("", sha, client, [], day=day)
    vectors = vectors.replace(layout.content_key(sha, []), "{content}")

    def template(key: str) -> str:
        return key.replace(sha, "{sha256}").replace(pid, "{projection}").replace(f"client={client}", "client={client}") \
            .replace(f"day={day}", "day={day}")

    return {
        "contract_version": CONTRACT_VERSION,
        "feature_dim": FEATURE_DIM,
        "columns": list(VECTOR_COLUMNS),
        "dictionary_columns": [c for c in parquet_options()["use_dictionary"] if c in VECTOR_COLUMNS],
        "metadata_keys": {"contract_version": META_CONTRACT.decode(), "model_sha256": META_MODEL_SHA256.decode(),
                          "model_name": META_MODEL_NAME.decode()},
        "client_id_pattern": layout._CLIENT_RE.pattern,
        "no_label": layout.NO_LABEL,
        "rows_per_object": ROWS_PER_OBJECT,
        "keys": {"vectors": template(vectors),
                 "latest_projection": template(layout.latest_projection_key("", sha)),
                 "projection": template(layout.projection_key("", pid)),
                 "index": template(layout.index_key("", pid)),
                 "catalog": template(layout.catalog_key("", pid))},
        "preprocessing": {"draft_factor": DRAFT_FACTOR, "max_pixels": DEFAULT_MAX_PIXELS, "max_bytes": MAX_PHOTO_BYTES,
                          "extensions": list(IMAGE_EXTENSIONS), "not_photos": dict(NOT_PHOTOS),
                          "card": card.preprocessing},
        "model": {"file": f"model/{model_path.name}",   # the card, less what only the job uses (20 kB of floats)
                  "card": {k: v for k, v in json.loads(card.to_json()).items() if k != "feature_center"}},
        "config_schema": CONFIG_SCHEMA,
        "labels": label_rules(),
    }


# ------------------------------------------------------------------------------------ decode probes
def _probe_picture(width: int, height: int, seed: int):
    """A small photo-like RGB picture (gradients, a bright off-centre blob, texture): every decoder step shows on
    it, and a turned or mirrored copy differs from it everywhere."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    blob = 120 * np.exp(-(((x - 0.3 * width) / (0.2 * width)) ** 2 + ((y - 0.25 * height) / (0.2 * height)) ** 2))
    r = 40 + 150 * x / width + blob
    g = 60 + 120 * y / height + 0.5 * blob
    b = 200 - 100 * (x + y) / (width + height)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def decode_probes() -> list[dict]:
    """Small photos whose decode the page checks against Pillow's at start-up (``probes.json``), to learn what this
    browser does instead of assuming it from its name: whether its decoders apply the EXIF orientation themselves
    (per format, and in ImageDecoder's scaled JPEG decode), whether its scaled JPEG decode is libjpeg's, how it
    composites alpha and reduces 16 bits. Each: the bytes, the model size to decode them for (which sets the JPEG
    draft scale) and what ``featurizer.preprocess.decode`` gives (upright RGB bytes and size)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from featurizer.preprocess import _orientation_exif, decode

    def encoded(img, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    turned6 = Image.Transpose.ROTATE_90          # stored so; EXIF 6 turns it upright
    small, big, large = _probe_picture(48, 32, 1), _probe_picture(96, 64, 2), _probe_picture(256, 192, 3)
    rng = np.random.RandomState(4)
    alpha = np.concatenate([rng.randint(0, 256, (32, 32, 3)), np.add.outer(np.arange(32) * 8, np.arange(32) // 4)[..., None]
                            % 256], -1).astype(np.uint8)
    probes = [
        ("jpeg", "JPEG", encoded(small, "JPEG", quality=90), 8),
        ("jpeg-exif6", "JPEG", encoded(small.transpose(turned6), "JPEG", quality=90, exif=_orientation_exif(6)), 8),
        ("png", "PNG", encoded(small, "PNG"), 8),
        ("png-exif6", "PNG", encoded(small.transpose(turned6), "PNG", exif=_orientation_exif(6)), 8),
        ("webp", "WEBP", encoded(small, "WEBP", quality=90), 8),
        ("webp-exif6", "WEBP", encoded(small.transpose(turned6), "WEBP", quality=90, exif=_orientation_exif(6)), 8),
        ("gif", "GIF", encoded(small.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), 8),
        ("bmp", "BMP", encoded(small, "BMP"), 8),
        ("jpeg-draft2", "JPEG", encoded(big, "JPEG", quality=90), 8),                    # 96x64 at 1/2
        ("jpeg-draft8-exif6", "JPEG", encoded(large.transpose(turned6), "JPEG", quality=90,
                                              exif=_orientation_exif(6)), 4),             # 192x256 at 1/8
        ("png-alpha", "PNG", encoded(Image.fromarray(alpha, "RGBA"), "PNG"), 16),
        ("png-16bit", "PNG", encoded(Image.fromarray(rng.randint(0, 65536, (16, 16)).astype(np.uint16)),
                                     "PNG"), 8),
    ]
    out = []
    for name, fmt, data, size in probes:
        img, _, _ = decode(data, size)
        out.append({"name": name, "format": fmt, "size": size, "bytes": base64.b64encode(data).decode(),
                    "width": img.width, "height": img.height, "rgb": base64.b64encode(img.tobytes()).decode()})
    return out


def build(out: str | os.PathLike | None = None, *, model_path: str | os.PathLike | None = None,
          force: bool = False) -> Path:
    """Build the app into ``out`` (default ``web/dist``) for the model (default: the committed one, models.DEFAULT_MODEL); returns it."""
    from models import model_path as committed_model

    out = Path(out) if out else DEFAULT_DIST
    model = Path(model_path) if model_path else committed_model()
    load_model_card(model)   # the file and its card agree, before anything is built around them
    ensure_packages()
    sources = [p for d in ("src", "static") for p in (WEB / d).rglob("*") if p.is_file()]
    from featurizer import preprocess

    stamp_value = _digest(sources + [WEB / "build.mjs", WEB / "package-lock.json", model, model.with_suffix(".json"),
                                     Path(layout.__file__), Path(__file__), Path(preprocess.__file__),
                                     WEB / "server.py"])
    stamp = out / ".fruits-build"
    if not force and stamp.is_file() and stamp.read_text() == stamp_value:
        return out
    with tempfile.TemporaryDirectory(prefix="fruits-web-") as tmp:
        extra = Path(tmp)
        (extra / "model").mkdir()
        shutil.copyfile(model, extra / "model" / model.name)
        shutil.copyfile(model.with_suffix(".json"), extra / "model" / model.with_suffix(".json").name)
        (extra / "contract.json").write_text(json.dumps(contract_spec(model), indent=1) + "\n")
        (extra / "probes.json").write_text(json.dumps(decode_probes()) + "\n")
        (extra / "config.json").write_text("{}\n")   # the server answers with the real settings
        _run(["node", "build.mjs", str(out), str(extra)], "building the web app")
    stamp.write_text(stamp_value)
    return out
