"""``fruits-edge sync``: vectorize the photos not uploaded yet and upload their vectors (or their projections).

Stages: check the bucket (before minutes of inference), find the photos, fetch the published projection
(``project``), vectorize what the manifest does not know, project, upload.

Vectors are never made twice: a file that could not be uploaded (the network went, credentials expired) is
kept as a *pending* file next to the manifest (``pending/<destination>/``), and the next sync to the same
destination uploads it first and does not vectorize its photos again; it is deleted once S3 confirmed it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edge_client.manifest import Manifest
from edge_client.upload import UploadSummary, check_bucket, upload_vectors
from edge_client.vectorize import Summary, UserError, find_photos, vectorize


@dataclass
class SyncResult:
    vectorized: Summary
    uploaded: UploadSummary | None          # None: nothing new to upload
    projection: object = None               # the Projection used (project=True)


def sync(photos_in: list[str], client, bucket: str, root: str, *, manifest: Manifest, model_path: str | Path,
         client_id: str, threads: int | None = None, label: str | None = None, rows_per_object: int = 5000,
         endpoint_url: str | None = None, progress: bool = True, project: bool = False, keep: Path | None = None,
         rejects_path: Path | None = None, recheck: bool = False, say=lambda msg: None) -> SyncResult:
    from featurizer.runtime import Model

    from contract.errors import ContractError
    from contract.layout import vectors_object_key

    model = Model(model_path, threads=1)
    try:   # the keys this run will write fit S3 (a long prefix or client id), before any work
        vectors_object_key(root, model.sha256, client_id, [])
    except ContractError as exc:
        raise UserError(str(exc)) from None
    check_bucket(client, bucket, endpoint_url)
    summary = Summary()
    photos = find_photos(photos_in, label=label, summary=summary)
    if not photos:
        raise UserError(f"no photos found in {', '.join(map(str, photos_in))}")
    projection = None
    if project:
        from edge_client.project import Published

        projection = Published(f"s3://{bucket}/{root}", client=client, endpoint_url=endpoint_url).projection(model.sha256)
        say(f"projection {projection.projection_id}: {projection.k} components (run {projection.run})")
    kind = f"projected:{projection.projection_id}" if projection else "vectors"
    known = set() if recheck else manifest.uploaded_ids(bucket, root, kind, model.sha256)
    waiting = pending_files(manifest, endpoint_url, bucket, root, kind, model.sha256)
    waiting_ids = pending_ids(waiting)
    if waiting:
        say(f"{len(waiting_ids)} vectors made by an earlier run are waiting to be uploaded ({len(waiting)} file(s))")
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "vectors.parquet"
        vectorize(photos, out, model_path=model.path, threads=threads, client_id=client_id,
                  skip_ids=known | waiting_ids, progress=progress, summary=summary, rejects_path=rejects_path)
        fresh = []
        if summary.ok:
            if projection is not None:
                from edge_client.project import project_file

                projected = Path(tmp) / "projected.parquet"
                project_file(out, projection, projected)
                out = projected
            fresh = [out]
        if not fresh and not waiting:
            return SyncResult(summary, None, projection)
        try:
            uploaded = upload_vectors(client, waiting + fresh, bucket, root, manifest=manifest,
                                      rows_per_object=rows_per_object, endpoint_url=endpoint_url, progress=progress,
                                      recheck=recheck, projection_id=projection.projection_id if projection else None)
        except UserError as exc:
            kept = keep_pending(fresh, manifest, endpoint_url, bucket, root, kind, model.sha256)
            if kept or waiting:
                raise UserError(f"{exc}; the vectors made so far are kept in {(kept or waiting)[0].parent}, and "
                                f"the same command uploads them without vectorizing again") from None
            raise
    for path in waiting:
        path.unlink(missing_ok=True)
    uploaded.rows_skipped += summary.skipped_known
    uploaded.rows_on_manifest_word += summary.skipped_known
    return SyncResult(summary, uploaded, projection)


def pending_dir(manifest: Manifest, endpoint_url: str | None, bucket: str, root: str, kind: str, model_sha256: str) -> Path:
    """Where vectors waiting for one destination are kept: next to the manifest, a folder per destination."""
    from edge_client.manifest import endpoint_key

    scope = "\n".join((endpoint_key(endpoint_url), bucket, root, kind, model_sha256))
    return manifest.path.parent / "pending" / hashlib.sha256(scope.encode()).hexdigest()[:16]


def pending_files(manifest: Manifest, endpoint_url, bucket, root, kind, model_sha256) -> list[Path]:
    folder = pending_dir(manifest, endpoint_url, bucket, root, kind, model_sha256)
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def pending_ids(files: list[Path]) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for f in files:
        try:
            ids.update(pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist())
        except Exception:  # a damaged pending file: its photos are vectorized again
            f.unlink(missing_ok=True)
    return ids


def keep_pending(files: list[Path], manifest: Manifest, endpoint_url, bucket, root, kind, model_sha256) -> list[Path]:
    """Copy freshly made vectors files into the destination's pending folder (atomically); returns their paths."""
    folder = pending_dir(manifest, endpoint_url, bucket, root, kind, model_sha256)
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for f in files:
        target = folder / f"vectors-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{len(kept)}.parquet"
        tmp = target.with_suffix(".part")
        shutil.copyfile(f, tmp)
        os.replace(tmp, target)
        kept.append(target)
    return kept
