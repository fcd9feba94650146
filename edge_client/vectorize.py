"""Photos -> 1280-d vectors in a Parquet file of the data contract.

Decoding and inference overlap: ``threads`` workers each own a one-thread LiteRT interpreter and take a
photo from bytes to vector (Pillow and LiteRT release the GIL).  The default is two workers more than cores:
parts of decoding hold the GIL, and while a worker waits for it, a spare worker's interpreter keeps the core
busy (on 2 cores, 4 workers ran 311-321 photos/s against 282-301 for 2, same run).
"""
from __future__ import annotations

import csv
import logging
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from contract.card import RANGE_TOLERANCE
from contract.errors import ContractError, FruitsError
from contract.layout import check_client_id
from contract.vectors import features_array, file_metadata, parquet_options, vector_schema
from featurizer.preprocess import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, NOT_PHOTOS, ImageRejected, image_id, preprocess,
                                   read_photo, warm_up)
from featurizer.runtime import Model

log = logging.getLogger(__name__)
ROW_GROUP = 2048
CHUNK = 8  # photos per task


class UserError(FruitsError):
    """A mistake the user can fix (bad path, empty folder, bad option); shown as one ``Error:`` line."""


@dataclass(frozen=True)
class Photo:
    path: Path
    source: str          # relative to the input root, always valid UTF-8
    label: str | None


@dataclass
class Summary:
    out: Path | None = None
    ok: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped_known: int = 0       # already uploaded (sync)
    skipped_not_image: int = 0   # files that are not photos (named in ``skipped``)
    seconds: float = 0.0
    rejects: list[tuple[str, str]] = field(default_factory=list)   # photos refused: (source, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # other files: (source, reason)
    rejects_file: Path | None = None
    labels_refused: dict = field(default_factory=dict)             # folder label -> (why, photos): sent unlabelled

    def label_lines(self) -> list[str]:
        """One line per folder name refused as a label (contract.labels), for stderr."""
        return [f"label {label!r} refused ({why}): its {n} photo(s) are sent without a label"
                for label, (why, n) in sorted(self.labels_refused.items())]

    @property
    def images_per_s(self) -> float:
        return (self.ok + self.rejected + self.duplicates) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"{self.ok} ok", f"{self.rejected} rejected", f"{self.duplicates} duplicates"]
        if self.skipped_known:
            parts.append(f"{self.skipped_known} already uploaded")
        if self.skipped_not_image:
            parts.append(f"{self.skipped_not_image} skipped (not photos)")
        return ", ".join(parts) + f" in {self.seconds:.1f} s ({self.images_per_s:.0f} images/s)"


def printable(path: Path) -> str:
    """A path as valid UTF-8 text: undecodable bytes of a file name become ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def default_workers() -> int:
    """Workers for ``vectorize``: cores + 2 (see the module docstring)."""
    return (os.cpu_count() or 2) + 2


def default_client_id() -> str:
    env = os.environ.get("FRUITS_CLIENT_ID")
    if env:
        return env
    host = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in socket.gethostname())[:100]
    return f"edge-{host or 'unknown'}"


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root``, sorted, following symlinked folders (each real folder once: no loops)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def find_photos(inputs: Iterable[str | os.PathLike], *, label: str | None = None,
                summary: Summary | None = None) -> list[Photo]:
    """Photos under folders (recursive, sorted, symlinked folders followed) or given as files; labels from
    the parent folder. Every other file is named in ``summary.skipped`` (or, for an image format that is not a
    photo, such as SVG, in ``summary.rejects``) with its reason: nothing is left out silently.

    The Fruits-360 layout ``Training/<Class>/<n>_100.jpg`` gives the label ``<Class>``; a photo directly
    in the root given has no label unless ``label`` is set.
    """
    from contract.labels import check_label

    if label is not None:
        label, problem = check_label(label)
        if problem:
            raise UserError(f"--label: {problem}")
    photos: list[Photo] = []
    checked: dict = {}
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            files = list(_walk(root))
        elif root.exists() or root.is_symlink():
            files, root = [root], root.parent
        else:
            raise UserError(f"{printable(root)} does not exist")
        for f in files:
            rel = f.relative_to(root)
            ext = f.suffix.lower()
            if ext not in IMAGE_EXTENSIONS:
                if summary is not None:
                    if ext in NOT_PHOTOS:
                        summary.rejected += 1
                        summary.rejects.append((printable(rel), NOT_PHOTOS[ext]))
                    else:
                        summary.skipped_not_image += 1
                        summary.skipped.append((printable(rel), f"skipped: not a photo (extension "
                                                                f"{printable(Path(ext)) or 'none'})"))
                continue
            lab = label if label is not None else (printable(Path(rel.parent.name)) if rel.parent.name else None)
            if lab is not None and label is None:   # a folder's name: the label rules (contract.labels)
                if lab not in checked:
                    checked[lab] = check_label(lab)
                canonical, problem = checked[lab]
                if problem:
                    if summary is not None:
                        why, n = summary.labels_refused.get(lab, (problem, 0))
                        summary.labels_refused[lab] = (why, n + 1)
                    lab = None
                else:
                    lab = canonical
            photos.append(Photo(f, printable(rel), lab))
    return photos


def check_output(out: Path, photos: list[Photo]) -> None:
    """Refuse an output that would replace something else than a vectors file (a photo, say)."""
    real = os.path.realpath(out)
    if any(os.path.realpath(p.path) == real for p in photos):
        raise UserError(f"--out {printable(out)} is one of the input photos; it would be replaced")
    if out.suffix.lower() != ".parquet":
        raise UserError(f"--out {printable(out)}: the vectors file must end with .parquet")
    if out.exists():
        if out.is_dir():
            raise UserError(f"--out {printable(out)} is a folder")
        with open(out, "rb") as f:
            if f.read(4) != b"PAR1":
                raise UserError(f"--out {printable(out)} exists and is not a Parquet file; it would be replaced")


class _Rows:
    """Column buffers for the contract's Parquet, written a row group at a time."""

    def __init__(self, path: Path, model: Model):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.schema = vector_schema().with_metadata(file_metadata(model.sha256, model.name))
        self.tmp = path.with_name(f".{path.name}.part")
        self.writer = pq.ParquetWriter(self.tmp, self.schema, **parquet_options())
        self.cols: dict[str, list] = {name: [] for name in self.schema.names}
        pa.array([], pa.int64())  # its first call imports pandas (~0.4 s): pay that before the photos, not after

    def add(self, row: dict) -> None:
        for name, values in self.cols.items():
            values.append(row[name])
        if len(self.cols["image_id"]) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.cols["image_id"]:
            # Features as one block: converting row by row holds the GIL the decoding threads need.
            columns = {name: (features_array(np.stack(values)) if name == "features"
                              else pa.array(values, type=self.schema.field(name).type))
                       for name, values in self.cols.items()}
            self.writer.write_table(pa.table(columns, schema=self.schema))
            self.cols = {name: [] for name in self.cols}

    def close(self, path: Path) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, path)

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``pool.map`` in order, with at most ``window`` items in flight (memory stays flat for 1M photos)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def vectorize(photos: list[Photo], out: str | os.PathLike, *, model_path: str | os.PathLike,
              threads: int | None = None, client_id: str | None = None, skip_ids: set[str] | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True, summary: Summary | None = None,
              rejects_path: str | os.PathLike | None = None) -> Summary:
    """Vectorize ``photos`` into the Parquet file ``out``; rejects go to ``<out>.rejects.csv``.

    ``skip_ids``: image ids to leave out (already uploaded); they are counted, not vectorized.
    """
    if not photos:
        raise UserError("no photos to vectorize (looked for " + ", ".join(IMAGE_EXTENSIONS) + ")")
    threads = default_workers() if threads is None else threads
    if threads < 1:
        raise UserError(f"--threads={threads} must be at least 1")
    client = client_id or default_client_id()
    try:
        check_client_id(client)
    except ContractError as exc:
        raise UserError(f"{exc} (--client-id or FRUITS_CLIENT_ID)") from None
    summary = summary or Summary()
    out = Path(out)
    check_output(out, photos)
    out.parent.mkdir(parents=True, exist_ok=True)
    model_path = Path(model_path)
    first = Model(model_path, threads=1)  # validates the file and its card once, up front
    warm_up()   # Pillow's lazy imports, here on this thread: never in the workers at once (import locks)
    low, high = first.card.output_range
    model_bytes = model_path.read_bytes()
    local = threading.local()
    skip_ids = skip_ids or set()

    def work(photo: Photo):
        try:
            data = read_photo(photo.path)
        except ImageRejected as exc:
            return photo, None, str(exc)
        iid = image_id(data)
        if iid in skip_ids:
            return photo, iid, None
        try:
            x, width, height = preprocess(data, first.input_size, max_pixels=max_pixels)
        except ImageRejected as exc:
            return photo, iid, str(exc)
        model = getattr(local, "model", None)
        if model is None:
            model = local.model = Model(model_path, threads=1, model_bytes=model_bytes, card=first.card)
        vec = model.features(x)
        if not (vec.min() >= low - RANGE_TOLERANCE and vec.max() <= high + RANGE_TOLERANCE):
            # Never from a sound model and runtime; the cloud refuses such rows, so they are never sent
            return photo, iid, (f"the model gave features outside its output range [{low:g}, {high:g}] (min "
                                f"{float(vec.min()):.4g}, max {float(vec.max()):.4g}): a damaged model or runtime")
        return photo, iid, (x, width, height, vec)

    from tqdm import tqdm

    rows = _Rows(out, first)
    seen: set[str] = set()
    start = time.perf_counter()
    bar = tqdm(total=len(photos), desc="vectorizing", unit="img", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vectorize") as pool:
            # Photos go to the workers CHUNK at a time: the main thread then wakes (and takes the GIL from
            # a decoding worker) once per chunk, not once per photo.
            results = (r for chunk in _bounded_map(pool, lambda chunk: [work(p) for p in chunk],
                                                   _chunks(photos, CHUNK), window=4 * threads) for r in chunk)
            for photo, iid, result in results:
                bar.update(1)
                if isinstance(result, str):
                    summary.rejected += 1
                    summary.rejects.append((photo.source, result))
                elif result is None:
                    summary.skipped_known += 1
                elif iid in seen:
                    summary.duplicates += 1
                else:
                    seen.add(iid)
                    x, width, height, vec = result
                    rows.add({"image_id": iid, "label": photo.label, "source": photo.source,
                              "width": width, "height": height, "features": vec,
                              "model_sha256": first.sha256, "model_name": first.name, "client_id": client,
                              "vectorized_at": datetime.now(timezone.utc)})
                    summary.ok += 1
        rows.close(out)
    except BaseException:
        rows.abort()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.out = out
    write_rejects(summary, Path(rejects_path) if rejects_path else rejects_path_for(out))
    return summary


def rejects_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.csv")


def write_rejects(summary: Summary, path: Path) -> None:
    """Every photo refused and every file skipped, with the reason; a stale list from an earlier run is removed."""
    if not summary.rejects and not summary.skipped:
        path.unlink(missing_ok=True)
        return
    summary.rejects_file = path
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source", "reason"])
        w.writerows(summary.rejects + summary.skipped)

