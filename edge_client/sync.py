"""``fruits-edge sync``: vectorize the photos not uploaded yet and upload their vectors (or their projections).

Stages: check the bucket (before minutes of inference), find the photos, fetch the published projection
(``project``), vectorize what the manifest does not know, project, upload.
"""
from __future__ import annotations

import tempfile
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

    check_bucket(client, bucket, endpoint_url)
    model = Model(model_path, threads=1)
    summary = Summary()
    photos = find_photos(photos_in, label=label, summary=summary)
    if not photos:
        raise UserError(f"no photos found in {', '.join(map(str, photos_in))}")
    projection = None
    if project:
        from edge_client.project import fetch_projection

        projection = fetch_projection(client, bucket, root, model.sha256, endpoint_url=endpoint_url)
        say(f"projection {projection.projection_id}: {projection.k} components (run {projection.run})")
    kind = f"projected:{projection.projection_id}" if projection else "vectors"
    known = set() if recheck else manifest.uploaded_ids(bucket, root, kind, model.sha256)
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "vectors.parquet"
        vectorize(photos, out, model_path=model.path, threads=threads, client_id=client_id, skip_ids=known,
                  progress=progress, summary=summary, rejects_path=rejects_path)
        if not summary.ok:
            return SyncResult(summary, None, projection)
        if projection is not None:
            from edge_client.project import project_file

            projected = Path(tmp) / "projected.parquet"
            project_file(out, projection, projected)
            out = projected
        uploaded = upload_vectors(client, [out], bucket, root, manifest=manifest, rows_per_object=rows_per_object,
                                  endpoint_url=endpoint_url, progress=progress, recheck=recheck,
                                  projection_id=projection.projection_id if projection else None)
    uploaded.rows_skipped += summary.skipped_known
    uploaded.rows_on_manifest_word += summary.skipped_known
    return SyncResult(summary, uploaded, projection)
