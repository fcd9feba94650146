"""Server-side featurization: raw photos -> vectors in the data contract, with the edge client's own code.

For clients that upload photos instead of vectors. Spark lists the photos (``binaryFile``, recursive; files
whose extension is not an image extension are skipped and counted), and a pandas UDF of the iterator form
runs :func:`featurizer.preprocess.preprocess` and :class:`featurizer.runtime.Model` (imported, not
copied) on the same ``.tflite`` the devices use. So a photo gets the same vector whichever side computes it.

- The model reaches the workers as EMR would ship it: ``SparkContext.addFile`` of the ``.tflite`` and its
  card (a local path, ``s3://`` or ``s3a://``), opened on each worker with ``SparkFiles.get``; one
  interpreter per Python worker (cached across tasks), one interpreter thread by default because Spark
  already runs one task per core.
- Arrow batches of photos are bounded (``batch_rows``, default 32) so a worker holds at most that many
  photos' bytes at once; see docs/benchmarks.md (server-side featurization) for memory per worker.
- Photos that cannot be decoded become rejects with their path and reason; the run goes on.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, Tuple

import pandas as pd

from contract.errors import FruitsError, one_line
from contract.layout import label_from_path
from contract.vectors import VECTOR_COLUMNS
from contract.card import card_path_for, load_model_card
from featurizer.preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

log = logging.getLogger(__name__)
SERVER_CLIENT_ID = "server:spark"
DEFAULT_BATCH_ROWS = 32
RESULT_DDL = ("image_id string, label string, source string, width int, height int, "
              "features array<float>, reason string")

_WORKER_MODELS: dict = {}   # one interpreter per Python worker process, reused by every task it runs


class FeaturizeError(FruitsError, ValueError):
    """Input the featurization refuses (no photos, an unreadable model); the message says what."""


@dataclass
class Featurized:
    """The outcome of :func:`featurize`: contract rows, rejects and the counts that reconcile them."""

    vectors: object       # DataFrame with exactly the contract's columns (persisted)
    rejects: object       # DataFrame: image_id, source, client_id, file, reason (persisted)
    counts: dict          # files, not_image, photos, ok, rejected
    model_sha256: str
    model_name: str
    cached: list = field(default_factory=list)   # what to unpersist when done
    read: list = field(default_factory=list)     # the photo paths this run read (or refused unread)

    def unpersist(self) -> None:
        for df in self.cached:
            df.unpersist()


def _worker_model(name: str, threads: int):
    from pyspark import SparkFiles

    from featurizer.runtime import Model

    key = (name, threads)
    model = _WORKER_MODELS.get(key)
    if model is None:
        model = _WORKER_MODELS[key] = Model(SparkFiles.get(name), threads=threads)
    return model


def ship_model(spark, model_path: str):
    """``addFile`` the model and its card; returns the card, read back from the driver's SparkFiles copy."""
    from pyspark import SparkFiles

    model_path = str(model_path)
    card_path = str(card_path_for(model_path)) if "://" not in model_path else model_path[: -len(".tflite")] + ".json"
    if not model_path.endswith(".tflite"):
        raise FeaturizeError(f"--model {model_path}: expected a .tflite file")
    if "://" not in model_path and not os.path.exists(model_path):
        raise FeaturizeError(f"--model {model_path}: no such file")
    sc = spark.sparkContext
    for path in (model_path, card_path):
        try:
            sc.addFile(path)
        except Exception as exc:  # Py4JJavaError: not found / no access
            raise FeaturizeError(f"cannot ship {path} to the workers: {one_line(exc)[:300]}") from None
    local = SparkFiles.get(os.path.basename(model_path))
    return load_model_card(local), os.path.basename(model_path)


def _qualified(spark, uri: str) -> str:
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs.makeQualified(path).toString().rstrip("/") + "/"


def _relative(path: str, roots: list[str]) -> str:
    for root in roots:
        if path.startswith(root):
            return path[len(root):]
    return path


def _counts(result) -> tuple[int, int]:
    """Rows and rejected rows in one Spark job (which also fills the cache)."""
    from pyspark.sql import functions as F

    row = result.select(F.count(F.lit(1)).alias("n"),
                        F.sum(F.col("reason").isNotNull().cast("long")).alias("bad")).first()
    return int(row["n"]), int(row["bad"] or 0)


def _unread_row(spark, path: str, roots: list[str], size: int) -> tuple:
    """A rejects row for a listed photo the scan did not read: empty (Spark skips those) or gone."""
    from featurizer.preprocess import ImageRejected, image_id, preprocess

    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    reason = "listed but gone when read (deleted during the run?)"
    if fs.exists(hpath) and fs.getFileStatus(hpath).getLen() == 0:
        try:
            preprocess(b"", size)
        except ImageRejected as exc:  # the edge client's own wording for an empty file
            reason = str(exc)
    source = _relative(path, roots)
    return (image_id(b""), label_from_path(source), source, None, None, None, reason, path)


def split_settings(spark, files, n_files: int, tasks_per_core: int, open_cost: int = 64 * 1024) -> dict[str, str]:
    """File-split settings for a photo scan: about ``tasks_per_core`` tasks per core for small inputs.

    Spark's defaults (4 MB "open cost" per file, 128 MB splits) cut 1,000 thumbnails into 32 tasks, and a
    pandas UDF task costs about 0.1-0.2 s of fixed overhead here, which is more than the inference of 32
    thumbnails; large inputs still get 128 MB splits.
    """
    total = int(files._jdf.queryExecution().optimizedPlan().stats().sizeInBytes())
    slots = max(1, spark.sparkContext.defaultParallelism) * max(1, tasks_per_core)
    split = -(-(total + n_files * open_cost) // slots)
    split = max(1 << 20, min(128 << 20, split))
    return {"spark.sql.files.openCostInBytes": str(open_cost), "spark.sql.files.maxPartitionBytes": str(split)}


def _vectorizer(model_file: str, threads: int, size: int, roots: list[str], max_pixels: int):
    """The pandas UDF body: photo bytes -> contract columns or a reason, with the featurizer's own code."""

    def vectorize_batches(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        from featurizer.preprocess import ImageRejected, image_id, preprocess

        model = _worker_model(model_file, threads)
        for paths, contents in batches:
            out = {name: [] for name in ("image_id", "label", "source", "width", "height", "features", "reason")}
            for path, data in zip(paths, contents):
                data = bytes(data) if data is not None else b""
                source = _relative(path, roots)
                out["image_id"].append(image_id(data))
                out["label"].append(label_from_path(source))
                out["source"].append(source)
                try:
                    x, width, height = preprocess(data, size, max_pixels=max_pixels)
                except ImageRejected as exc:
                    x, width, height, reason = None, None, None, str(exc)
                else:
                    reason = None
                out["width"].append(width)
                out["height"].append(height)
                out["features"].append(model.features(x) if x is not None else None)
                out["reason"].append(reason)
            yield pd.DataFrame(out)

    return vectorize_batches


def unreadable(path: str, size: int) -> str | None:
    """Why a listed photo is refused unread (a device can upload any size; Spark's ``binaryFile`` reads a file whole),
    or None: over :data:`featurizer.preprocess.MAX_PHOTO_BYTES`, or, on a local filesystem, not a regular file (a
    named pipe would hang the reading task)."""
    import stat
    from urllib.parse import unquote, urlparse

    from featurizer.preprocess import MAX_PHOTO_BYTES

    if size > MAX_PHOTO_BYTES:
        return f"{size:,} bytes, over the limit of {MAX_PHOTO_BYTES:,} bytes for a photo: not read"
    if path.startswith("file:"):
        try:
            mode = os.stat(unquote(urlparse(path).path)).st_mode
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}"
        if not stat.S_ISREG(mode):
            return "not a regular file (a named pipe, a socket or a device): not read"
    return None


def list_photos(spark, uris: list[str], skip: set[str] | None = None) -> tuple[object, list[str], int, list[tuple[str, str]]]:
    """The ``binaryFile`` scan of the photos, the listed photo paths, the number of other files, and the photos
    refused unread: keys of ``raw/`` that are not of the layout's shape (a Hadoop path collapses '//' and
    resolves '..', so such a key would be opened as another path, or as none).

    The files are listed with Hadoop's recursive listing, and the scan is given exactly the photos to read:
    Spark's own recursive lookup overflowed its stack on a key with a '..' folder (StackOverflowError).
    ``skip``: photos featurized before (incremental); neither read nor counted."""
    from contract.layout import device_key_problem
    from cloud_pca.storage import list_files

    listed, refused = [], []
    try:
        for uri in uris:
            for path, size, *_ in list_files(spark, uri, suffixes=None):   # paths as the scan's path column spells them
                if skip and path in skip:
                    continue
                problem = (device_key_problem(path, uri) or unreadable(path, size)) \
                    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS else None
                (refused.append((path, problem)) if problem else listed.append(path))
    except Exception as exc:  # Py4JJavaError: no such bucket, no access
        raise FeaturizeError(f"cannot list photos under {', '.join(uris)}: {one_line(exc)[:300]}") from None
    photos = [p for p in listed if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    if not photos and skip:
        return None, [], len(listed), refused          # nothing new since the last run
    if not photos:
        first = f"; first refused: {refused[0][0]}: {refused[0][1]}" if refused else ""
        raise FeaturizeError(f"no photos under {', '.join(uris)} ({len(listed) - len(photos)} other file(s); "
                             f"looked for {', '.join(IMAGE_EXTENSIONS)}){first}")
    if refused:
        log.warning("%d photo(s) not read: %s", len(refused), refused[0][1])
    try:
        files = spark.read.format("binaryFile").load(photos)
    except Exception as exc:
        raise FeaturizeError(f"cannot read photos under {', '.join(uris)}: {one_line(exc)[:300]}") from None
    return files, photos, len(listed) - len(photos), refused


def infer(spark, files, udf_body, *, batch_rows: int, split: dict[str, str]):
    """Run the inference once: the result is persisted and counted with bounded batches and splits."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    ext = F.lower(F.regexp_extract("path", r"(\.[^./]+)$", 1))
    udf = pandas_udf(udf_body, RESULT_DDL)
    result = (files.filter(ext.isin(*IMAGE_EXTENSIONS))
              .select(udf("path", "content").alias("r"), F.col("path").alias("file")).select("r.*", "file"))
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_rows), **split}
    previous = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        result = result.persist()
        n_rows, n_rejected = _counts(result)
    except Exception as exc:
        result.unpersist()
        raise FeaturizeError(f"featurization failed: {one_line(exc)[:500]}") from None
    finally:
        for key, value in previous.items():
            spark.conf.set(key, value)
    return result, n_rows, n_rejected


def add_unread(spark, result, photos: list[str], roots: list[str], size: int, n_rows: int):
    """Spark's file scan leaves zero-byte files out: every listed photo must be vectorized or rejected. Which
    ones were not read is an anti-join on the executors, so the driver receives only those few paths."""
    if n_rows >= len(photos):
        return result, None
    listed_df = spark.createDataFrame([(p,) for p in photos], "file string")
    missing = [r["file"] for r in listed_df.join(result.select("file"), "file", "left_anti").collect()]
    extra = spark.createDataFrame([_unread_row(spark, p, roots, size) for p in missing], RESULT_DDL + ", file string")
    return result.unionByName(extra).persist(), True


def featurize(spark, images: str | list[str], *, model_path: str, client_id: str = SERVER_CLIENT_ID,
              threads: int = 1, batch_rows: int = DEFAULT_BATCH_ROWS, tasks_per_core: int = 2,
              max_pixels: int = DEFAULT_MAX_PIXELS, skip: set[str] | None = None) -> Featurized:
    """Vectorize every photo under ``images`` (but the paths in ``skip``); the result is persisted and counted
    (inference runs once). With nothing new to read, ``vectors`` and ``rejects`` are None and the counts 0."""
    from pyspark.sql import functions as F

    uris = [str(images)] if isinstance(images, (str, os.PathLike)) else [str(u) for u in images]
    if threads < 1:
        raise FeaturizeError(f"--threads={threads} must be at least 1")
    if batch_rows < 1:
        raise FeaturizeError(f"--batch-rows={batch_rows} must be at least 1")
    card, model_file = ship_model(spark, model_path)
    roots = []
    for uri in uris:
        try:
            roots.append(_qualified(spark, uri))
        except Exception as exc:
            raise FeaturizeError(f"{uri}: {one_line(exc)[:300]}") from None
    files, photos, n_other, refused = list_photos(spark, uris, skip)
    if not photos and not refused:
        return Featurized(None, None, {"files": n_other, "not_image": n_other, "photos": 0, "ok": 0, "rejected": 0},
                          card.sha256, card.name, [], [])
    body = _vectorizer(model_file, threads, card.input_size, roots, max_pixels)
    result, n_rows, n_rejected = infer(spark, files, body, batch_rows=batch_rows,
                                       split=split_settings(spark, files, len(photos) + n_other, tasks_per_core))
    cached = [result]
    result, added = add_unread(spark, result, photos, roots, card.input_size, n_rows)
    if refused:
        from featurizer.preprocess import image_id

        rows = [(image_id(b""), None, _relative(p, roots), None, None, None, reason, p) for p, reason in refused]
        result = result.unionByName(spark.createDataFrame(rows, RESULT_DDL + ", file string")).persist()
        added = True
    if added:
        cached.append(result)
        n_rows, n_rejected = _counts(result)

    vectors = result.filter(F.col("reason").isNull()).select(
        "image_id", "label", "source", "width", "height", "features",
        F.lit(card.sha256).alias("model_sha256"), F.lit(card.name).alias("model_name"),
        F.lit(client_id).alias("client_id"), F.current_timestamp().alias("vectorized_at"))
    assert tuple(vectors.columns) == VECTOR_COLUMNS
    rejects = result.filter(F.col("reason").isNotNull()).select(
        "image_id", "source", F.lit(client_id).alias("client_id"), "file", "reason")
    if n_rows != len(photos) + len(refused):  # listed vs read: a file appeared or vanished during the run
        log.warning("listed %d photos but read %d; the counts below are what was read", len(photos), n_rows)
    counts = {"files": n_rows + n_other, "not_image": n_other, "photos": n_rows, "ok": n_rows - n_rejected,
              "rejected": n_rejected}
    log.info("featurized %s", counts)
    return Featurized(vectors, rejects, counts, card.sha256, card.name, cached, photos + [p for p, _ in refused])


STATE = "state"


def _state_uri(output: str, model_sha256: str) -> str:
    return f"{output.rstrip('/')}/{STATE}/model={model_sha256}"


def load_featurized(spark, output: str, model_sha256: str) -> tuple[set[str], int]:
    """The photos featurized so far for this model (their paths) and the state's generation number."""
    import json

    from cloud_pca.storage import path_exists, read_bytes

    uri = _state_uri(output, model_sha256)
    if not path_exists(spark, f"{uri}/current.json"):
        return set(), 0
    try:
        pointer = json.loads(read_bytes(spark, f"{uri}/current.json"))
        done = json.loads(read_bytes(spark, f"{uri}/{pointer['photos']}"))
        if not isinstance(done, list) or not all(isinstance(p, str) for p in done):
            raise ValueError("not a list of paths")
        return set(done), int(pointer["number"])
    except Exception as exc:  # missing file, bad JSON, missing keys
        raise FeaturizeError(f"{uri}: the featurize state is damaged ({one_line(exc)[:200]}); redo all with "
                             f"--full") from None


def commit_featurized(spark, output: str, model_sha256: str, done: set[str], number: int, run: str) -> None:
    """The photos featurized, a new generation written before its pointer (a failed run leaves the old one)."""
    import json
    import uuid

    from cloud_pca.storage import write_bytes

    uri = _state_uri(output, model_sha256)
    name = f"gen={number + 1:05d}-{uuid.uuid4().hex[:6]}/photos.json"
    write_bytes(spark, f"{uri}/{name}", json.dumps(sorted(done)).encode())
    write_bytes(spark, f"{uri}/current.json", json.dumps({"number": number + 1, "photos": name, "count": len(done),
                                                          "run": run}).encode())


def featurize_to(spark, images: list[str], output: str, *, model_path: str, threads: int = 1,
                 batch_rows: int = DEFAULT_BATCH_ROWS, overwrite: bool = False, incremental: bool = False,
                 full: bool = False, say=lambda msg: None) -> dict:
    """``fruits-cloud featurize``: featurize and write the vectors (and the rejects) under the dataset root
    ``output``; returns where they went, the counts and the rate.

    ``incremental``: only photos not featurized before (kept per model under ``OUTPUT/state/``: raw photos are
    content-named and never change), their vectors appended to the same folder, so a daily run costs the new
    photos only; ``full``: every photo again, the vectors and the state started afresh."""
    import time

    from cloud_pca.storage import path_exists

    start = time.perf_counter()
    if incremental and full:
        raise FeaturizeError("give --incremental or --full, not both")
    card, _ = ship_model(spark, model_path)
    skip, number = (load_featurized(spark, output, card.sha256) if incremental else (set(), 0))
    uri = featurized_uri(output, card.sha256)
    if incremental and not skip and path_exists(spark, uri):
        raise FeaturizeError(f"{uri} holds vectors but no featurize state: give --full once to start one")
    say(f"photos under {', '.join(images)}" + (f" ({len(skip)} featurized before)" if skip else ""))
    feat = featurize(spark, images, model_path=model_path, threads=threads, batch_rows=batch_rows, skip=skip)
    rejects_uri = output.rstrip("/") + "/rejects/featurize-" + feat.model_sha256[:12]
    try:
        if feat.vectors is not None:
            mode = "append" if incremental else ("overwrite" if (overwrite or full) else "errorifexists")
            try:
                write_featurized(feat, output, mode=mode)
            except Exception as exc:
                raise FeaturizeError(f"cannot write the vectors under {output}: {one_line(exc)[:300]} "
                                     f"(use --overwrite to replace, or --incremental to add)") from None
            if feat.counts["rejected"]:
                feat.rejects.write.mode("append" if incremental else "overwrite").parquet(rejects_uri)
        if incremental or full:
            commit_featurized(spark, output, card.sha256, (skip if incremental else set()) | set(feat.read), number,
                              run=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    finally:
        feat.unpersist()
    seconds = time.perf_counter() - start
    counts = {**feat.counts, "already_featurized": len(skip)}
    return {"vectors": uri, "rejects": rejects_uri if feat.counts["rejected"] else None, "counts": counts,
            "photos_per_s": feat.counts["photos"] / seconds if seconds > 0 else 0.0}


def featurized_uri(output: str, model_sha256: str) -> str:
    """Where the server's vectors of one model go below the dataset root ``output``."""
    from contract.layout import upload_day, vectors_prefix

    return output.rstrip("/") + "/" + vectors_prefix("", model_sha256).strip("/") + \
        f"/day={upload_day()}/client={SERVER_CLIENT_ID.replace(':', '-')}"


def write_featurized(feat: Featurized, output: str, *, mode: str = "errorifexists") -> str:
    """Write the vectors under the contract's key layout below ``output`` (a dataset root); returns the URI."""
    uri = featurized_uri(output, feat.model_sha256)
    feat.vectors.write.mode(mode).option("compression", "zstd").parquet(uri)
    return uri
