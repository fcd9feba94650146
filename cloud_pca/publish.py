"""Publish a PCA run for the devices: the projection artifact (mean, scale, first k components, model
fingerprint) and the reference index a device identifies with (prototypes per label and calibrated thresholds,
:mod:`cloud_pca.identifier`) under ``ROOT/models/``, then the pointer ``projection-latest-<model_sha256>.json`` that
names both. See :mod:`contract.projection`.

A run is published only if its files agree: the marker, the summary, the saved model and the projections
must name the same model, k and number of rows (a run killed half-way and re-run would otherwise mix two
models' files).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from contract.errors import FruitsError, one_line
from contract.layout import catalog_key, index_key, latest_projection_key, projection_key
from contract.projection import Projection, ReferenceIndex, pointer_bytes
from contract.vectors import safe_inverse
from cloud_pca.pca import FruitsPCAModel, PCAInputError
from cloud_pca.storage import small_table
from cloud_pca.storage import read_bytes, write_bytes
class PublishError(FruitsError, ValueError):
    """A run that cannot be published (incomplete, inconsistent, unlabelled); says which file disagrees."""


def _json(spark, uri: str, what: str) -> dict:
    try:
        return json.loads(read_bytes(spark, uri))
    except Exception as exc:  # missing file (Py4JJavaError) or not JSON
        raise PublishError(f"{uri}: {what} is missing or unreadable ({one_line(exc)[:200]}); the run is not "
                           f"complete") from None


def check_run(spark, run_uri: str) -> tuple[dict, FruitsPCAModel]:
    """The run's summary and model, after checking that marker, summary, model and projections agree."""
    run_uri = run_uri.rstrip("/")
    marker = _json(spark, f"{run_uri}/_SUCCESS.json", "the completion marker _SUCCESS.json")
    summary = _json(spark, f"{run_uri}/summary.json", "summary.json")
    try:
        model = FruitsPCAModel.load(spark, f"{run_uri}/model")
    except PCAInputError as exc:
        raise PublishError(str(exc)) from None
    expected = {"run_id": summary.get("run_id"), "pca_model": summary.get("pca_model"), "k": summary.get("k"),
                "rows": summary.get("projections_rows", summary.get("projected")),
                "model_sha256": summary.get("model_sha256")}
    for key, value in expected.items():
        if marker.get(key) != value:
            raise PublishError(f"{run_uri}: _SUCCESS.json says {key}={marker.get(key)!r} but summary.json says "
                               f"{value!r}: the folder mixes two runs; re-run it with --overwrite")
    if model.model_id_ != marker["pca_model"] or model.n_components_ != marker["k"]:
        raise PublishError(f"{run_uri}/model is model {model.model_id_} with k={model.n_components_}, the run's "
                           f"marker names {marker['pca_model']} with k={marker['k']}: re-run it with --overwrite")
    small = small_table(spark, f"{run_uri}/projections", ["pca_model"])
    if small is not None:
        found = dict(Counter(small.column("pca_model").to_pylist())) if small.num_rows else {}
    else:
        proj = spark.read.parquet(f"{run_uri}/projections")
        found = {r["pca_model"]: r["count"] for r in proj.groupBy("pca_model").count().collect()}
    if set(found) != {marker["pca_model"]} or found[marker["pca_model"]] != marker["rows"]:
        raise PublishError(f"{run_uri}/projections holds {found} rows per model, the marker names "
                           f"{marker['rows']} rows of {marker['pca_model']}: re-run it with --overwrite")
    if not summary.get("model_sha256"):
        raise PublishError(f"{run_uri}/summary.json names no model fingerprint")
    if marker.get("projections") == "new rows only":
        raise PublishError(f"{run_uri} is an incremental run whose projections hold only its new rows; the index "
                           f"needs every row: run it with --reproject (or a --full run) to publish")
    return summary, model


def _small_projections(spark, run_uri: str, limit: int | None = None):
    """The run's projections as a pyarrow Table when they are one task's worth (``limit`` bytes; read by the driver: a
    small run is published without a Spark job, so the local stack's refresh never starts Spark's JVM), else None."""
    return small_table(spark, f"{run_uri.rstrip('/')}/projections",
                       ["pca_model", "image_id", "label", "source", "client_id", "pca", "residual"], limit=limit)


def projection_from_run(spark, run_uri: str, k: int | None = None, *, checked=None) -> Projection:
    summary, model = checked or check_run(spark, run_uri)
    kk = k or model.n_components_
    if not 1 <= kk <= model.n_components_:
        raise PublishError(f"k={kk} must be between 1 and the run's k={model.n_components_}")
    return Projection(model.mean_, safe_inverse(model.scale_), model.components_[:kk].T, summary["model_sha256"],
                      "", summary.get("run_id", ""))


def _nothing_counts(run_uri: str, record: dict) -> PublishError:
    held = ", ".join(f"{h['label']!r} ({h['rows']} rows)" for h in record.get("held_for_operator", [])[:5])
    return PublishError(f"{run_uri}/projections: no labelled row counts for the index ({record.get('rows', 0)} labelled, "
                        f"{record.get('anonymous_rows', 0)} of them anonymous: "
                        f"{record.get('anonymous_not_counted') or 'none counted'}"
                        + (f"; held for the operator: {held}" if held else "") + ")")


def index_from_run(spark, run_uri: str, k: int, projection_id: str, *, driver_read_bytes: int | None = None,
                   catalog_labels: set | None = None, accepted: set | None = None, species_of=None, small=False
                   ) -> tuple[ReferenceIndex, dict]:
    """What devices identify with (:mod:`cloud_pca.identifier`), fitted on the run's labelled rows' first k
    components that count (:mod:`cloud_pca.votes`: labels are votes): by the driver from a small run's projections
    (one task's worth), else in Spark. Returns the index and the votes' record."""
    import numpy as np
    from pyspark.sql import functions as F

    from cloud_pca import identifier, votes

    if small is False:   # (publish reads the projections once for the turn and the index)
        small = _small_projections(spark, run_uri, driver_read_bytes)
    if small is not None:
        labels = small.column("label").to_pylist() if "label" in small.column_names else []
        rows = [i for i, lab in enumerate(labels) if lab is not None]
        if not rows:
            raise PublishError(f"{run_uri}/projections has no labelled rows: nothing to identify with")
        n = small.num_rows
        pca, ids = small.column("pca").to_pylist(), small.column("image_id").to_pylist()
        sources = small.column("source").to_pylist() if "source" in small.column_names else [None] * n
        clients = small.column("client_id").to_pylist() if "client_id" in small.column_names else [None] * n
        y = np.array([pca[i][:k] for i in rows], np.float64)
        srcs, iids = [sources[i] for i in rows], [ids[i] for i in rows]

        def fit(chosen, names, species_of=None):
            return identifier.fit_arrays(y[chosen], [names[i] for i in chosen], [srcs[i] for i in chosen],
                                         [iids[i] for i in chosen], projection_id, species_of=species_of)

        v = votes.weigh(y, [labels[i] for i in rows], [clients[i] for i in rows], srcs, iids,
                        catalog_labels=catalog_labels, accepted=accepted, fit=fit)
        record = v.record()
        chosen = np.flatnonzero(v.counted)
        if not len(chosen):
            raise _nothing_counts(run_uri, record)
        return fit(chosen, v.labels, species_of), record
    proj = spark.read.parquet(f"{run_uri.rstrip('/')}/projections")
    for col in ("source", "client_id"):
        if col not in proj.columns:
            proj = proj.withColumn(col, F.lit(None).cast("string"))
    chosen, record = votes.weigh_in_spark(spark, proj.filter(F.col("label").isNotNull()), k, projection_id,
                                          catalog_labels=catalog_labels, accepted=accepted)
    try:
        if not record["counted"]:
            raise _nothing_counts(run_uri, record)
        return identifier.fit(spark, chosen, k, projection_id, species_of=species_of), record
    except ValueError as exc:
        raise PublishError(f"{run_uri}/projections: {exc}") from None
    finally:
        chosen.unpersist()


def accepted_labels(spark, run_uri: str) -> set:
    """The labels the operator accepted for the run's output (``OUTPUT/state/accepted-labels.json``)."""
    from cloud_pca.incremental import read_registry

    return set(read_registry(spark, run_uri.rstrip("/").rsplit("/", 1)[0], "accepted-labels.json"))


@dataclass
class Publication:
    """What :func:`publish` did: the projection (and index) it published, or held (``index`` None, nothing written
    under ``models/``), the files written, and the record it kept as ``publish.json`` in the run folder."""

    projection: Projection
    index: ReferenceIndex | None
    written: list[str]
    record: dict

    @property
    def held(self) -> bool:
        return bool(self.record.get("held"))


def in_force(spark, root_uri: str, model_sha256: str) -> tuple[Projection | None, str | None]:
    """The projection in force for the model (the pointer's), or None; and why it could not be read, if so."""
    from contract.projection import read_pointer

    root = root_uri.rstrip("/")
    pointer_uri = f"{root}/{latest_projection_key('', model_sha256)}"
    try:
        pointer = read_pointer(read_bytes(spark, pointer_uri), pointer_uri)
    except FileNotFoundError:
        return None, None
    except FruitsError as exc:
        return None, one_line(exc)
    uri = f"{root}/{projection_key('', pointer.projection_id)}"
    try:
        return Projection.from_bytes(read_bytes(spark, uri)), None
    except (FileNotFoundError, FruitsError, ValueError) as exc:
        return None, f"{uri}: {one_line(exc)}"


def publish(spark, run_uri: str, root_uri: str, k: int | None = None, *, driver_read_bytes: int | None = None,
            accept_turn: bool = False, hold_deg: float | None = None) -> Publication:
    """Write the projection, the index, the operator's catalog (``ROOT/models/catalog.json``, checked: a broken one
    stops the publish) and last the pointer naming the three under ``root_uri/models/``, unless the new components
    turn too far from the projection in force (:mod:`cloud_pca.turn`): then nothing is published until the operator
    accepts it (``accept_turn``). Either way ``publish.json`` in the run folder says what happened: the turn, who
    turned it, and which labels counted (:mod:`cloud_pca.votes`). Projections up to ``driver_read_bytes`` (default one
    task's worth) are read by the driver, larger ones in Spark."""
    import numpy as np

    from cloud_pca import turn
    from cloud_pca.catalog import CatalogToolError, published_catalog
    from cloud_pca.votes import owner_of
    from contract.layout import is_anonymous

    try:
        catalog = published_catalog(spark, root_uri)   # before the work: a broken catalog is said at once
    except CatalogToolError as exc:
        raise PublishError(str(exc)) from None
    summary, model = check_run(spark, run_uri)
    projection = projection_from_run(spark, run_uri, k, checked=(summary, model))
    current, unreadable = in_force(spark, root_uri, projection.model_sha256)
    hold_deg = turn.HOLD_TURN_DEG if hold_deg is None else hold_deg
    small = _small_projections(spark, run_uri, driver_read_bytes)
    if small is not None:
        n = small.num_rows
        y = np.array(small.column("pca").to_pylist(), np.float64).reshape(n, -1) if n else np.zeros((0, model.n_components_))
        clients = small.column("client_id").to_pylist() if "client_id" in small.column_names else [None] * n
        sources = small.column("source").to_pylist() if "source" in small.column_names else [None] * n
        owners = [owner_of(c, s) for c, s in zip(clients, sources)]
        anonymous = np.array([is_anonymous(o) or is_anonymous(c) for o, c in zip(owners, clients)], bool)
        residual = np.array(small.column("residual").to_pylist(), np.float64) if "residual" in small.column_names \
            else None
        turned = turn.measure(model, current, y, owners, anonymous, residual, hold_deg=hold_deg)
    else:
        turned = turn.measure_in_spark(spark, model, current,
                                       spark.read.parquet(f"{run_uri.rstrip('/')}/projections"), hold_deg=hold_deg)
    if unreadable:
        turned["in_force_unreadable"] = unreadable
    record = {"run": run_uri.rstrip("/"), "root": root_uri.rstrip("/"), "model_sha256": projection.model_sha256,
              "projection_id": projection.projection_id, "k": projection.k, "turn": turned,
              "held": bool(turned["held"] and not accept_turn), "accepted_turn": bool(turned["held"] and accept_turn)}
    if record["held"]:
        record["published"] = False
        write_bytes(spark, f"{run_uri.rstrip('/')}/publish.json", json.dumps(record, indent=1).encode())
        return Publication(projection, None, [], record)
    index, votes = index_from_run(spark, run_uri, projection.k, projection.projection_id,
                                  driver_read_bytes=driver_read_bytes, small=small,
                                  catalog_labels=set(catalog.labels) if catalog is not None else None,
                                  accepted=accepted_labels(spark, run_uri),
                                  species_of=catalog.species if catalog is not None else None)
    root = root_uri.rstrip("/")
    files = [(projection_key("", projection.projection_id), projection.to_bytes()),
             (index_key("", index.index_id), index.to_bytes())]
    if catalog is not None:
        files.append((catalog_key("", catalog.catalog_id), catalog.to_bytes()))
    files.append((latest_projection_key("", projection.model_sha256),
                  pointer_bytes(projection, index, catalog.catalog_id if catalog else None)))
    written = []
    for key, data in files:
        write_bytes(spark, f"{root}/{key}", data)   # the pointer last: devices see a complete set
        written.append(f"{root}/{key}")
    record.update({"published": True, "index_id": index.index_id, "catalog_id": catalog.catalog_id if catalog else None,
                   "labels": votes,
                   "labels_without_card": catalog.missing(index.labels) if catalog else sorted(index.labels)})
    write_bytes(spark, f"{run_uri.rstrip('/')}/publish.json", json.dumps(record, indent=1).encode())
    return Publication(projection, index, written, record)
