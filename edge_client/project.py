"""On the device: fetch a published projection, project vectors to k values, and identify a fruit.

Everything here uses numpy and pyarrow only (no Spark, no TensorFlow), and reads the bucket with
``GetObject`` under ``models/`` only, which is all the uploader's credentials allow.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import ContractError, read_vectors
from contract.catalog import Catalog
from contract.layout import catalog_key, index_key, latest_projection_key, projection_key
from contract.projection import NOT_SURE, UNKNOWN, Answer, Pointer, Projection, ReferenceIndex, read_pointer
from contract.vectors import PROJECTION_COLUMN, features_array, features_matrix, file_metadata, parquet_options
from edge_client.vectorize import UserError
from featurizer.preprocess import LAB_FILM, film_split


class Published:
    """Where ``publish`` wrote the projection and index: an S3 root (``GetObject`` only) or a local folder holding
    the same keys (``ROOT/models/...``)."""

    def __init__(self, root: str, *, client=None, endpoint_url: str | None = None):
        self.client, self.endpoint_url = client, endpoint_url
        if root.startswith("s3://"):
            from edge_client.upload import parse_s3_uri

            self.bucket, self.root = parse_s3_uri(root)
            self.where = lambda key: f"s3://{self.bucket}/{key}"
        else:
            folder = Path(root)
            if not folder.is_dir():
                raise UserError(f"--from {root}: not an s3:// root nor a folder")
            self.bucket, self.root, self.folder = None, "", folder
            self.where = lambda key: str(folder / key)

    def get(self, key: str, what: str) -> bytes:
        if self.bucket is None:
            try:
                return (self.folder / key).read_bytes()
            except FileNotFoundError:
                raise UserError(f"no {what} at {self.where(key)}") from None
            except OSError as exc:
                raise UserError(f"{self.where(key)}: cannot read ({exc.strerror or exc})") from None
        from botocore.exceptions import BotoCoreError, ClientError

        from edge_client.upload import explain

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise UserError(f"no {what} at {self.where(key)}") from None
            raise UserError(explain(exc, self.bucket, self.endpoint_url)) from None
        except BotoCoreError as exc:
            raise UserError(explain(exc, self.bucket, self.endpoint_url)) from None

    def pointer(self, model_sha256: str) -> Pointer:
        key = latest_projection_key(self.root, model_sha256)
        data = self.get(key, f"projection published for model {model_sha256[:12]}... (run `fruits-cloud publish`)")
        try:
            return read_pointer(data, self.where(key))
        except ContractError as exc:
            raise UserError(str(exc)) from None

    def projection(self, model_sha256: str, projection_id: str | None = None) -> Projection:
        """The projection in force for ``model_sha256`` (or the one named), checked against that fingerprint."""
        pid = projection_id or self.pointer(model_sha256).projection_id
        key = projection_key(self.root, pid)
        try:
            projection = Projection.from_bytes(self.get(key, "projection"), self.where(key))
            projection.check_model(model_sha256, self.where(key))
        except ContractError as exc:
            raise UserError(str(exc)) from None
        return projection

    def identifier(self, model_sha256: str) -> tuple[Projection, ReferenceIndex]:
        """The projection and index the pointer names, checked against each other and the model."""
        projection, index, _ = self.published(model_sha256)
        return projection, index

    def published(self, model_sha256: str) -> tuple[Projection, ReferenceIndex, Catalog | None]:
        """The projection, index and catalog (None: none was published) the pointer names: one publish's, checked."""
        pointer = self.pointer(model_sha256)
        projection = self.projection(model_sha256, pointer.projection_id)
        key = index_key(self.root, pointer.index_id)
        try:
            index = ReferenceIndex.from_bytes(self.get(key, "reference index"), self.where(key), pointer.index_id)
            index.check_projection(projection, self.where(key))
            catalog = None
            if pointer.catalog_id:
                key = catalog_key(self.root, pointer.catalog_id)
                catalog = Catalog.from_bytes(self.get(key, "catalog"), self.where(key), pointer.catalog_id)
        except ContractError as exc:
            raise UserError(str(exc)) from None
        return projection, index, catalog


def load_local(path: str | os.PathLike, kind: str):
    """A published file given directly: ``kind`` is "projection", "index" or "catalog"."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return {"projection": Projection, "index": ReferenceIndex, "catalog": Catalog}[kind].from_bytes(data, str(path))
    except ContractError as exc:
        raise UserError(str(exc)) from None


def project_file(vectors: str | os.PathLike, projection: Projection, out: str | os.PathLike) -> int:
    """A vectors file -> its projected form (k values per row, ``projection_id`` column); returns rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_vectors(vectors)
    shas = set(table.column("model_sha256").to_pylist())
    for sha in shas:
        try:
            projection.check_model(sha, f"projection {projection.projection_id}")
        except ContractError as exc:
            raise UserError(str(exc)) from None
    x = features_matrix(table.column("features"), projection.mean.shape[0])
    y = projection.project(x)
    idx = table.schema.get_field_index("features")
    table = table.set_column(idx, "features", features_array(y))
    table = table.append_column(PROJECTION_COLUMN, pa.array([projection.projection_id] * table.num_rows, pa.string()))
    meta = file_metadata(projection.model_sha256, projection.model_name, projection.projection_id)
    pq.write_table(table.replace_schema_metadata(meta), out, **parquet_options())
    read_vectors(out)  # what we wrote follows the contract's projected form
    return table.num_rows


def identify_features(features: np.ndarray, projection: Projection, index: ReferenceIndex, top: int = 3) -> Answer:
    """The answer for one photo's 1280-d vector (what the page's ``identifyVector`` does, line for line)."""
    if not np.isfinite(features).all():
        raise UserError("the model gave NaN or infinite features; check the .tflite against its card")
    return index.answer(projection.project(features), top=top)


def identify(photo: str | os.PathLike, model, projection: Projection, index: ReferenceIndex, top: int = 3) -> Answer:
    """The answer for one photo: a label, "unknown", or "not sure: A or B" (see :meth:`ReferenceIndex.answer`)."""
    from featurizer.preprocess import ImageRejected, preprocess, read_photo

    try:
        projection.check_model(model.sha256, f"projection {projection.projection_id}")
        index.check_projection(projection)
    except ContractError as exc:
        raise UserError(str(exc)) from None
    try:
        x, _, _ = preprocess(read_photo(photo), model.input_size)
    except ImageRejected as exc:
        raise UserError(f"{photo}: {exc}") from None
    return identify_features(model.features(x), projection, index, top)


@dataclass
class PhotoAnswer:
    """One photo's answer (None when it could not be read: ``reason`` says why) and its folder's label."""

    path: str
    truth: str | None
    answer: Answer | None
    reason: str = ""


def identify_photos(photos: list, model, projection: Projection, index: ReferenceIndex, *, threads: int | None = None,
                    progress: bool = False, top: int = 3) -> list[PhotoAnswer]:
    """Each photo vectorized (in parallel, as ``fruits-edge vectorize`` does) and answered, in the given order."""
    import tempfile

    import pyarrow.parquet as pq

    from edge_client.vectorize import printable, vectorize
    from featurizer.preprocess import ImageRejected, image_id, read_photo

    try:
        projection.check_model(model.sha256, f"projection {projection.projection_id}")
        index.check_projection(projection)
    except ContractError as exc:
        raise UserError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="fruits-identify-") as tmp:
        summary = vectorize(photos, Path(tmp) / "v.parquet", model_path=model.path, threads=threads,
                            client_id="identify", progress=progress, rejects_path=Path(tmp) / "rejects.csv")
        table = pq.read_table(Path(tmp) / "v.parquet", columns=["image_id", "source", "features"]) if summary.ok \
            else None
    by_source, by_id = {}, {}
    if table is not None:
        feats = features_matrix(table.column("features"), projection.mean.shape[0])
        for i, (iid, src) in enumerate(zip(table.column("image_id").to_pylist(), table.column("source").to_pylist())):
            by_source[src] = by_id[iid] = feats[i]
    reasons = dict(summary.rejects)
    out = []
    for photo in photos:
        x = by_source.get(photo.source)
        if x is None and photo.source not in reasons:     # a copy of another photo: vectorized once
            try:
                x = by_id.get(image_id(read_photo(photo.path)))
            except ImageRejected:
                x = None
        path = printable(photo.path)
        if x is None:
            out.append(PhotoAnswer(path, photo.label, None, reasons.get(photo.source, "not read")))
        else:
            out.append(PhotoAnswer(path, photo.label, identify_features(x, projection, index, top)))
    return out


def write_answers(answers: list[PhotoAnswer], path: str | os.PathLike, catalog: Catalog | None = None,
                  lang: str = "en") -> None:
    """The answers as CSV: path, answer (a label, "unknown" or "not sure: A or B"), the nearest label, score,
    runner-up, the fruit's name from the catalog (named answers, in ``lang``), the species the answer names, its
    confidence (the share of held-out answers with its margin that were right), the candidates shown (labels, best
    first, ``;``-separated), the folder's label and, for a photo not read, why."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "answer", "label", "score", "runner_up", "fruit", "species", "confidence", "candidates",
                    "folder_label", "not_read"])
        for a in answers:
            if a.answer is None:
                w.writerow([a.path, "", "", "", "", "", "", "", "", a.truth or "", a.reason])
            else:
                x = a.answer
                fruit = catalog.name(x.label, lang) if catalog is not None and x.named else ""
                w.writerow([a.path, x.answer, x.label, f"{x.score:.4f}", x.runner_up, fruit, x.species,
                            "" if x.confidence is None else f"{x.confidence:.4f}", ";".join(x.candidates),
                            a.truth or "", ""])


def never_sent(labels, n: int, seed: int = 0) -> list[str]:
    """``n`` of ``labels`` to withhold from a fit as never sent, chosen by ``seed`` (the bench's and the demo's rule,
    so both withhold the same fruits: on the project's 21 real fruits, n=3 gives Grapefruit Pink, Peach, Walnut)."""
    fruits = sorted(set(labels))
    if n <= 0:
        return []
    return sorted(str(f) for f in np.random.RandomState(seed).choice(fruits, size=min(n, max(0, len(fruits) - 2)),
                                                                     replace=False))


def lab_film_seen(film: str = LAB_FILM) -> str:
    """Why a lab test of ``film`` is not film-disjoint for the model in use, "" when it is: the index never sees the
    test's film, but a backbone fine-tuned on that film's Fruits-360 Training frames has seen its fruit turning (the
    model card's ``fine_tuned``: its folders, and the film it dropped)."""
    from contract.card import load_model_card
    from models import model_path

    tuned = load_model_card(model_path()).weights.get("fine_tuned") or {}
    if tuned.get("dropped_film") == film or not any(film_split(f, film) for f in tuned.get("folders", ())):
        return ""
    return (f"the model's fine-tuning trained on the Fruits-360 Training frames of film {film!r}, the film the lab "
            f"test keeps")


def species(label: str) -> str:
    """A label's species when nothing better is known: its first word (Fruits-360's varieties: "Apple Red 2" ->
    "Apple"). The catalog knows better (``Catalog.species``: "Granny-Smith" -> "apple"), and a published index
    carries its labels' species."""
    return label.split()[0] if label.split() else label


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval (95% with the default ``z``) of a share ``hits / n``: what the share could be, given
    how few photos measured it (144 shop photos at 82.6% named right: 75.6-88.0%). None without photos."""
    if n <= 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def figures(rows: list[tuple], known: set[str], species_of=species) -> dict:
    """How right the answers are, from (true label, answer[, candidates]) rows: on photos of known labels, the shares
    named right, given a wrong name, "unknown" and "not sure", and the precision of named answers; on photos of labels
    the index does not hold ("never sent"), the share answered "unknown" or "not sure"; and the same at the species
    level (``species_of``: a variety's name is right if its species is, and "not sure" between two varieties of the
    right species names it). With candidates (the labels shown, best first), the share of known photos whose label
    (species) is among them."""
    def share(n, d):
        return round(n / d, 4) if d else None

    out = {}
    for level, norm in (("label", lambda x: x), ("species", species_of)):
        held = {norm(x) for x in known}
        mine = [(t, a, r[2] if len(r) > 2 else None) for r in rows for t, a in [r[:2]]]
        seen = [(norm(t), a, c) for t, a, c in mine if (t in known if level == "label" else norm(t) in held)]
        unseen = [(norm(t), a) for t, a, _ in mine if not (t in known if level == "label" else norm(t) in held)]
        named_as = [_named(a, norm) for _, a, _ in seen]
        right = sum(n is not None and n == t for (t, _, _), n in zip(seen, named_as))
        named = sum(n is not None for n in named_as)
        kinds = [_kind(a) for _, a, _ in seen]
        shown = [c for _, _, c in seen if c is not None]
        out[level] = {
            "known_photos": len(seen), "named_right": share(right, len(seen)),
            "wrong": share(named - right, len(seen)), "unknown": share(kinds.count(UNKNOWN), len(seen)),
            "not_sure": share(sum(k == NOT_SURE and n is None for k, n in zip(kinds, named_as)), len(seen)),
            "precision": share(right, named),
            "among_candidates": share(sum(t in {norm(x) for x in c} for t, _, c in seen if c is not None), len(shown))
            if shown else None,
            "never_sent_photos": len(unseen),
            "never_sent_refused": share(sum(_named(a, norm) is None for _, a in unseen), len(unseen)),
            "never_sent_unknown": share(sum(_kind(a) == UNKNOWN for _, a in unseen), len(unseen))}
    return out


def _named(answer: str, norm) -> str | None:
    """What an answer names at a level (``norm`` of its label), or None when it names nothing: "not sure: A or B"
    names the species A and B share."""
    kind = _kind(answer)
    if kind == UNKNOWN:
        return None
    if kind == NOT_SURE:
        a, _, b = answer[len(NOT_SURE) + 2:].partition(" or ")
        return norm(a) if norm(a) == norm(b) else None
    return norm(answer)


def share_interval(share: float | None, n: int) -> str:
    """" (95% interval lo-hi%)" of a share of ``n`` photos (:func:`wilson`; shares are kept to 4 decimals, so the count
    is exact), or "" without photos."""
    w = wilson(round(share * n), n) if share is not None and n else None
    return f" (95% interval {w[0]:.1%}-{w[1]:.1%})" if w else ""


def figures_text(rows: list[tuple], known: set[str], species_of=species) -> str:
    """:func:`figures` as a few lines (empty without rows)."""
    if not rows:
        return ""
    lines = []
    for level, f in figures(rows, known, species_of).items():
        level = "labels" if level == "label" else level
        if f["known_photos"]:
            lines.append(f"known {level} ({f['known_photos']} photos): named right {f['named_right']:.1%}, wrong "
                         f"{f['wrong']:.1%}, unknown {f['unknown']:.1%}, not sure {f['not_sure']:.1%}; precision of "
                         f"named answers " + (f"{f['precision']:.1%}" if f["precision"] is not None else "-"))
        if f["never_sent_photos"]:
            lines.append(f"never-sent {level} ({f['never_sent_photos']} photos): answered unknown or not sure "
                         f"{f['never_sent_refused']:.1%} (unknown {f['never_sent_unknown']:.1%})")
    return "\n".join(lines)


def _kind(answer: str) -> str:
    return UNKNOWN if answer == UNKNOWN else NOT_SURE if answer.startswith(NOT_SURE + ": ") else "named"
