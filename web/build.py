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
    from featurizer.preprocess import DEFAULT_MAX_PIXELS, DRAFT_FACTOR, IMAGE_EXTENSIONS, NOT_PHOTOS

    card = load_model_card(model_path)
    sha, pid, client = "f" * 64, "e" * 16, "CLIENT"
    vectors = layout.vectors_object_key("", sha, client, [])
    vectors = vectors.replace(layout.content_key(sha, []), "{content}")

    def template(key: str) -> str:
        return key.replace(sha, "{sha256}").replace(pid, "{projection}").replace(f"client={client}", "client={client}")

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
                 "index": template(layout.index_key("", pid))},
        "preprocessing": {"draft_factor": DRAFT_FACTOR, "max_pixels": DEFAULT_MAX_PIXELS,
                          "extensions": list(IMAGE_EXTENSIONS), "not_photos": dict(NOT_PHOTOS),
                          "card": card.preprocessing},
        "model": {"file": f"model/{model_path.name}", "card": json.loads(card.to_json())},
    }


def build(out: str | os.PathLike | None = None, *, model_path: str | os.PathLike | None = None,
          force: bool = False) -> Path:
    """Build the app into ``out`` (default ``web/dist``) for the model (default: the committed fp32); returns it."""
    from models import model_path as committed_model

    out = Path(out) if out else DEFAULT_DIST
    model = Path(model_path) if model_path else committed_model()
    load_model_card(model)   # the file and its card agree, before anything is built around them
    ensure_packages()
    sources = [p for d in ("src", "static") for p in (WEB / d).rglob("*") if p.is_file()]
    stamp_value = _digest(sources + [WEB / "build.mjs", WEB / "package-lock.json", model,
                                     model.with_suffix(".json"), Path(layout.__file__), Path(__file__)])
    stamp = out / ".fruits-build"
    if not force and stamp.is_file() and stamp.read_text() == stamp_value:
        return out
    with tempfile.TemporaryDirectory(prefix="fruits-web-") as tmp:
        extra = Path(tmp)
        (extra / "model").mkdir()
        shutil.copyfile(model, extra / "model" / model.name)
        shutil.copyfile(model.with_suffix(".json"), extra / "model" / model.with_suffix(".json").name)
        (extra / "contract.json").write_text(json.dumps(contract_spec(model), indent=1) + "\n")
        (extra / "config.json").write_text("{}\n")   # the server answers with the real settings
        _run(["node", "build.mjs", str(out), str(extra)], "building the web app")
    stamp.write_text(stamp_value)
    return out
