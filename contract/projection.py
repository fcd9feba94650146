"""The projected form of the data contract: a published PCA projection, the k-d vectors made with it on the
device, and the reference index that ``fruits-edge identify`` uses.

Artifacts (numpy ``.npz``, read with numpy alone, so the edge needs nothing more), under ``PREFIX/models/``::

    projection-<id>.npz           mean (d), scale (d: 1/std, 0 for constant columns), components (d x k),
                                  meta: model_sha256, model_name, k, run
    projection-latest-<model_sha256>.json   the pointer a device reads (it may only GET under models/, never
                                  list): which projection and index are in force
    index-<id>.npz                what identifies a photo in the projection's space (:class:`ReferenceIndex`):
                                  labels (c), prototypes (p x k, grouped by label), owner (p), whiten (k x k),
                                  counts (c); meta: the projection id, the thresholds and their calibration

``<id>`` is the first 16 hex characters of the sha256 of the artifact's arrays and meta, so the same
projection (or index) always has the same name. The pointer names both: ``{"projection_id": ..., "index_id": ...,
"k": ..., "run": ...}``. Projected vectors are contract rows whose ``features`` hold k values,
plus a ``projection_id`` column, stored under
``PREFIX/projected/model=<sha>/projection=<id>/client=<id>/part-<content>.parquet``; the PCA job refuses to
mix them with raw 1280-d vectors.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from contract.errors import ContractError


def pack_arrays(meta: dict | str | None = None, **arrays) -> bytes:
    """``arrays`` (and ``meta`` as JSON, or JSON text as given) as the bytes of one ``.npz`` file, readable with
    numpy alone.

    >>> unpack_arrays(pack_arrays({"k": 2}, x=np.arange(3)))["meta"]
    {'k': 2}
    """
    buf = io.BytesIO()
    if meta is not None:
        arrays["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_arrays(data: bytes) -> dict:
    """The arrays in bytes made by :func:`pack_arrays` (pickles refused), ``meta`` decoded from JSON when there;
    anything else (empty, truncated, not a zip, a damaged array, bad JSON) raises ValueError."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = {name: z[name] for name in z.files}
        if "meta" in out:
            out["meta"] = json.loads(str(out["meta"]))
    except ValueError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError, zlib.error: a damaged or partial file
        raise ValueError(f"not a readable .npz ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(out, dict) or ("meta" in out and not isinstance(out["meta"], dict)):
        raise ValueError("its meta is not a JSON object")
    return out


def digest(arrays, dtype, extra: str = "") -> str:
    """16 hex characters naming some numbers: SHA-256 over the arrays' bytes as ``dtype`` (C order), then
    ``extra``. The same numbers give the same name on every machine.

    >>> digest([np.zeros(2)], np.float32) == digest([np.zeros(2, dtype=np.float64)], np.float32)
    True
    """
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=dtype).tobytes())
    h.update(extra.encode())
    return h.hexdigest()[:16]


@dataclass
class Projection:
    mean: np.ndarray          # (d,)
    scale: np.ndarray         # (d,)  1/std, 0 where std == 0
    components: np.ndarray    # (d, k)
    model_sha256: str
    model_name: str
    run: str = ""

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    @property
    def projection_id(self) -> str:
        return digest((self.mean, self.scale, self.components), np.float32, self.model_sha256)

    def project(self, x: np.ndarray) -> np.ndarray:
        """(n, d) or (d,) feature vectors -> (n, k) or (k,) float32 projections."""
        x = np.asarray(x, dtype=np.float64)
        return (((x - self.mean) * self.scale) @ self.components).astype(np.float32)

    def to_bytes(self) -> bytes:
        meta = {"model_sha256": self.model_sha256, "model_name": self.model_name, "k": self.k, "run": self.run,
                "projection_id": self.projection_id, "format": 1}
        return pack_arrays(meta, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                           components=self.components.astype(np.float32))

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<projection>") -> "Projection":
        from contract.card import FEATURE_DIM

        try:
            z = unpack_arrays(data)
            meta = z["meta"]
            p = cls(z["mean"].astype(np.float64), z["scale"].astype(np.float64), z["components"].astype(np.float64),
                    str(meta["model_sha256"]), meta.get("model_name", ""), meta.get("run", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ContractError(f"{origin}: not a projection artifact ({exc}); publish it again") from None
        if p.mean.ndim != 1:
            raise ContractError(f"{origin}: mean has shape {p.mean.shape}, not (d,)")
        d = p.mean.shape[0]
        if p.scale.shape != (d,) or p.components.ndim != 2 or p.components.shape[0] != d:
            raise ContractError(f"{origin}: inconsistent shapes mean {p.mean.shape}, scale {p.scale.shape}, "
                                f"components {p.components.shape}")
        if d != FEATURE_DIM or not 1 <= p.k <= d:
            raise ContractError(f"{origin}: projects {d}-d vectors to k={p.k}; the model makes {FEATURE_DIM}-d "
                                f"vectors (and 1 <= k <= d)")
        for name, a in (("mean", p.mean), ("scale", p.scale), ("components", p.components)):
            if not np.isfinite(a).all():
                raise ContractError(f"{origin}: {name} holds NaN or infinite values; publish it again")
        if meta.get("projection_id") != p.projection_id:
            raise ContractError(f"{origin}: content does not match its projection id {meta.get('projection_id')}")
        return p

    def check_model(self, model_sha256: str, origin: str = "the projection") -> None:
        if model_sha256 != self.model_sha256:
            raise ContractError(f"{origin} was fitted on vectors of model {self.model_sha256[:12]}..., but this "
                                f"device's model is {model_sha256[:12]}...; projecting would mix two feature "
                                f"spaces. Use the same .tflite, or publish a projection for this model")


UNKNOWN = "unknown"
NOT_SURE = "not sure"
INDEX_FORMAT = 3


def not_sure_answer(first: str, second: str) -> str:
    """The answer when two labels are too close to tell apart: ``not sure: A or B``."""
    return f"{NOT_SURE}: {first} or {second}"


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Each row of ``a`` divided by its length (a zero row stays zero)."""
    a = np.asarray(a, np.float64)
    n = np.sqrt((a * a).sum(axis=-1, keepdims=True))
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


@dataclass(frozen=True)
class Answer:
    """What a device answers for one photo (or a few of one fruit): ``answer`` is a label, :data:`UNKNOWN`, or ``not
    sure: A or B``; ``ranked`` the labels nearest first as (label, score, distance): the candidates a person is shown.
    A label's score is 1 on one of its prototypes and falls to 0 at the index's unknown distance (a distance scale,
    not a chance). ``species`` is the species the answer names: the label's, or the one two varieties it is not sure
    between share ("Apple: Granny Smith or Golden?"), "" when it names none. ``confidence``: of the photos held out of
    the fit that were named with such a margin, the share named right (the index's ``confidence`` table); None when
    nothing is named or the index has no table."""

    answer: str
    label: str            # the nearest label (also when the answer is unknown or not sure)
    runner_up: str        # the next label ("" with a one-label index)
    score: float
    ranked: tuple
    species: str = ""
    confidence: float | None = None

    @property
    def named(self) -> bool:
        return self.answer == self.label

    @property
    def candidates(self) -> list[str]:
        return [label for label, _, _ in self.ranked]


@dataclass
class ReferenceIndex:
    """What a device identifies with, published with the projection (``index-<id>.npz``, its own content id).

    A photo's projected vector ``y`` (k values) is carried into the identification space ``u = unit(y @ whiten)``
    (``whiten``: k x k, the labels' pooled within-label spread made round, so that every direction counts by how
    much it separates labels, not by how much photos of one fruit vary along it). A label's distance is the cosine
    distance ``1 - u . p`` to its nearest prototype ``p`` (a few unit vectors per label, chosen by the cloud job in
    Spark from that label's rows). The answer is the nearest label, unless

    - its distance is beyond its label's unknown distance (``unknown_distances``, each label's own, calibrated on its
      held-out photos and shrunk toward the index's ``unknown_distance``): :data:`UNKNOWN`;
    - the nearest label's distance over the runner-up's is above ``not_sure_ratio``: ``not sure: A or B``.

    Both thresholds are calibrated on rows held out of the fit (by film: see :mod:`cloud_pca.identifier`), for the
    false-refusal rate ``calibration["refusal"]``; ``calibration`` records what they gave on those rows. ``species``
    names each label's species (the catalog's fruit, from publish); ``confidence`` maps the margin of a named answer
    (the nearest label's distance over the runner-up's) to the share of held-out answers with that margin that were
    right: ``{"ratio_upper": [...], "right": [...], "rows": [...]}``, bins of increasing ratio, or None.
    """

    labels: list[str]             # (c,) sorted
    prototypes: np.ndarray        # (p, k) unit vectors in the identification space
    owner: np.ndarray             # (p,) the label (index into labels) of each prototype
    whiten: np.ndarray            # (k, k)
    counts: np.ndarray            # (c,) rows of each label the index was fitted on
    projection_id: str
    unknown_distance: float
    not_sure_ratio: float
    calibration: dict
    species: list | None = None   # (c,) each label's species; None: each label its own first word
    confidence: dict | None = None
    unknown_distances: np.ndarray | None = None   # (c,) each label's own unknown distance; None: all unknown_distance

    def __post_init__(self):
        if self.species is None:
            self.species = [label.split()[0] if label.split() else label for label in self.labels]
        if self.unknown_distances is None:
            self.unknown_distances = np.full(len(self.labels), float(self.unknown_distance))
        self.unknown_distances = np.asarray(self.unknown_distances, np.float64)

    @property
    def k(self) -> int:
        return int(self.whiten.shape[0])

    def meta_json(self) -> str:
        """The index's numbers that are not arrays, as the JSON text stored in the file (sorted keys, ASCII)."""
        return json.dumps({"format": INDEX_FORMAT, "projection_id": self.projection_id, "labels": list(self.labels),
                           "counts": [int(n) for n in self.counts], "unknown_distance": float(self.unknown_distance),
                           "not_sure_ratio": float(self.not_sure_ratio), "calibration": self.calibration,
                           "species": list(self.species), "confidence": self.confidence,
                           "unknown_distances": [round(float(v), 6) for v in self.unknown_distances]},
                          sort_keys=True)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"prototypes": np.ascontiguousarray(self.prototypes, np.float32),
                "owner": np.ascontiguousarray(self.owner, np.int32),
                "whiten": np.ascontiguousarray(self.whiten, np.float32)}

    @property
    def index_id(self) -> str:
        """16 hex characters naming the index's content (its key: ``index-<index_id>.npz``): SHA-256 of the bytes of
        prototypes (float32), owner (int32) and whiten (float32), then the meta JSON text."""
        h = hashlib.sha256()
        for a in self._arrays().values():
            h.update(a.tobytes())
        h.update(self.meta_json().encode())
        return h.hexdigest()[:16]

    def to_bytes(self) -> bytes:
        return pack_arrays(self.meta_json(), **self._arrays())

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<index>", index_id: str | None = None) -> "ReferenceIndex":
        """The index in ``data``, checked (shapes, finite numbers, thresholds in range) and, given ``index_id``
        (the name it was fetched by), that its content is that index."""
        try:
            z = unpack_arrays(data)
            meta = z["meta"]
            if meta.get("format") != INDEX_FORMAT:
                raise ContractError(f"{origin}: an index of format {meta.get('format', 1)}, not {INDEX_FORMAT} (made by "
                                    f"an older publish); publish again")
            index = cls([str(v) for v in meta["labels"]], z["prototypes"].astype(np.float64),
                        np.atleast_1d(z["owner"]).astype(np.int64), z["whiten"].astype(np.float64),
                        np.array(meta["counts"], np.int64), str(meta["projection_id"]),
                        float(meta["unknown_distance"]), float(meta["not_sure_ratio"]), dict(meta["calibration"]),
                        [str(v) for v in meta["species"]], _confidence(meta.get("confidence")),
                        np.array(meta["unknown_distances"], np.float64))
        except ContractError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ContractError(f"{origin}: not a reference index ({exc}); publish it again") from None
        c, k = len(index.labels), index.k
        if c == 0:
            raise ContractError(f"{origin}: the index has no labels: nothing to identify with")
        if len(set(index.labels)) != c:
            raise ContractError(f"{origin}: a label appears twice")
        if index.whiten.shape != (k, k) or index.prototypes.ndim != 2 or index.prototypes.shape[1] != k:
            raise ContractError(f"{origin}: whiten {index.whiten.shape} and prototypes {index.prototypes.shape} do not "
                                f"agree on k")
        p = index.prototypes.shape[0]
        if index.owner.shape != (p,) or index.counts.shape != (c,) or p == 0:
            raise ContractError(f"{origin}: {p} prototypes, {index.owner.shape} owners, {c} labels and "
                                f"{index.counts.shape} counts do not agree")
        if index.owner[0] != 0 or index.owner[-1] != c - 1 or not np.isin(np.diff(index.owner), (0, 1)).all():
            raise ContractError(f"{origin}: prototypes must be grouped by label, every label 0..{c - 1} in order")
        for name, a in (("prototypes", index.prototypes), ("whiten", index.whiten),
                        ("thresholds", np.array([index.unknown_distance, index.not_sure_ratio]))):
            if not np.isfinite(a).all():
                raise ContractError(f"{origin}: {name} hold NaN or infinite values; publish it again")
        if not (0 <= index.unknown_distance <= 2 and index.not_sure_ratio >= 0):
            raise ContractError(f"{origin}: thresholds out of range (unknown distance {index.unknown_distance} must "
                                f"be in [0, 2], the not-sure ratio >= 0)")
        if len(index.species) != c:
            raise ContractError(f"{origin}: {len(index.species)} species for {c} labels")
        if index.unknown_distances.shape != (c,) or not np.isfinite(index.unknown_distances).all() \
                or not ((index.unknown_distances >= 0) & (index.unknown_distances <= 2)).all():
            raise ContractError(f"{origin}: its labels' unknown distances are not {c} numbers in [0, 2]")
        if index_id is not None and index.index_id != index_id:
            raise ContractError(f"{origin}: content does not match its index id {index_id}")
        return index

    def check_projection(self, projection: "Projection", origin: str = "the index") -> None:
        """This index belongs to ``projection``: the same id and the same k."""
        if self.projection_id != projection.projection_id:
            raise ContractError(f"{origin} belongs to projection {self.projection_id}, not {projection.projection_id}")
        if self.k != projection.k:
            raise ContractError(f"{origin} has k={self.k}, the projection k={projection.k}")

    def distances(self, y: np.ndarray) -> np.ndarray:
        """(n, c) (or (c,) for one vector): each label's cosine distance to the nearest of its prototypes, in the
        identification space. A vector with no direction there (all zero) is at distance 1 from everything."""
        u = unit_rows(np.atleast_2d(np.asarray(y, np.float64)) @ self.whiten)
        starts = np.searchsorted(self.owner, np.arange(len(self.labels)))   # prototypes are grouped by label
        d = 1.0 - np.maximum.reduceat(u @ self.prototypes.T, starts, axis=1)
        return d[0] if np.ndim(y) == 1 else d

    def answer(self, y: np.ndarray, top: int = 3) -> Answer:
        """The answer for one projected vector (see the class): the page's ``answer`` is this, line for line."""
        return self.decide(self.distances(np.asarray(y, np.float64).reshape(-1)), top)

    def answer_photos(self, ys: np.ndarray, top: int = 3) -> Answer:
        """The answer for several photos of one fruit (``ys``: their projected vectors): each label's distance is the
        mean of its distances to the photos, then as :meth:`answer`."""
        return self.decide(np.atleast_2d(self.distances(np.atleast_2d(np.asarray(ys, np.float64)))).mean(axis=0), top)

    def decide(self, d: np.ndarray, top: int = 3) -> Answer:
        """The answer from each label's distance (:meth:`answer`)."""
        order = np.argsort(d, kind="stable")
        first = int(order[0])
        second = int(order[1]) if len(order) > 1 else -1
        t = self.unknown_distance
        ranked = tuple((self.labels[i], float(max(0.0, 1.0 - d[i] / t)) if t > 0 else float(d[i] <= 0),
                        float(d[i])) for i in order[:max(1, top)])
        ratio = float(d[first] / d[second]) if second >= 0 and d[second] > 0 else 0.0
        species, confidence = "", None
        if d[first] > self.unknown_distances[first]:
            text = UNKNOWN
        elif second >= 0 and d[second] > 0 and ratio > self.not_sure_ratio:
            text = not_sure_answer(self.labels[first], self.labels[second])
            if self.species[first] == self.species[second]:
                species = self.species[first]
        else:
            text, species = self.labels[first], self.species[first]
            confidence = confidence_of(self.confidence, ratio)
        return Answer(text, self.labels[first], self.labels[second] if second >= 0 else "", ranked[0][1], ranked,
                      species, confidence)


def confidence_of(table: dict | None, ratio: float) -> float | None:
    """The share right of held-out answers named with this margin (the first bin whose upper ratio holds it, else the
    last); None without a table."""
    if not table or not table.get("ratio_upper"):
        return None
    for upper, right in zip(table["ratio_upper"], table["right"]):
        if ratio <= upper:
            return float(right)
    return float(table["right"][-1])


def _confidence(table) -> dict | None:
    """A confidence table read from an index's meta, checked (bins of increasing ratio, shares in [0, 1])."""
    if table is None:
        return None
    upper, right, rows = table["ratio_upper"], table["right"], table["rows"]
    if not (len(upper) == len(right) == len(rows) >= 1) or list(upper) != sorted(upper) \
            or not all(0 <= float(v) <= 1 for v in right) or not np.isfinite(np.array(upper, np.float64)).all():
        raise ValueError("its confidence table is not bins of increasing ratio with shares in [0, 1]")
    return {"ratio_upper": [float(v) for v in upper], "right": [float(v) for v in right], "rows": [int(v) for v in rows]}


@dataclass(frozen=True)
class Pointer:
    """What ``projection-latest-<sha>.json`` names: the projection, the index and the catalog (None: no catalog was
    published) in force for a model; all from one publish."""

    projection_id: str
    index_id: str
    catalog_id: str | None = None


def pointer_bytes(projection: Projection, index: ReferenceIndex, catalog_id: str | None = None) -> bytes:
    """``projection-latest-<sha>.json``: the projection, index and catalog in force for the projection's model."""
    return json.dumps({"projection_id": projection.projection_id, "index_id": index.index_id, "k": projection.k,
                       "run": projection.run, "catalog_id": catalog_id}).encode()


def read_pointer(data: bytes, origin: str = "<pointer>") -> Pointer:
    """What a pointer names; anything else is one ContractError naming ``origin``."""
    from contract.layout import check_projection_id

    try:
        pointer = json.loads(data)
        catalog = pointer.get("catalog_id")
        return Pointer(check_projection_id(pointer["projection_id"]), check_projection_id(pointer["index_id"]),
                       None if catalog is None else check_projection_id(catalog))
    except (ValueError, KeyError, TypeError, AttributeError, ContractError):
        raise ContractError(f"{origin}: not a projection pointer (a JSON object naming a 16-hex projection_id and "
                            f"index_id, and a catalog_id or null); publish again") from None


def rewrite_pointer(data: bytes, *, catalog_id: str) -> bytes:
    """The same pointer naming another catalog (``fruits-cloud catalog publish``)."""
    pointer = json.loads(data)
    read_pointer(data)
    pointer["catalog_id"] = catalog_id
    return json.dumps(pointer).encode()
