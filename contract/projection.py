"""The projected form of the data contract: a published PCA projection, the k-d vectors made with it on the
device, and the reference index that ``fruits-edge identify`` uses.

Artifacts (numpy ``.npz``, read with numpy alone, so the edge needs nothing more), under ``PREFIX/models/``::

    projection-<id>.npz           mean (d), scale (d: 1/std, 0 for constant columns), components (d x k),
                                  meta: model_sha256, model_name, k, run
    projection-latest-<model_sha256>.json   {"projection_id": "<id>"}: the pointer a device reads (it may
                                  only GET under models/, never list)
    index-<id>.npz                labels (c), centroids (c x k) in the projection's space, counts (c), and per
                                  label the distance beyond which a photo is not that label (thresholds, c)

``<id>`` is the first 16 hex characters of the sha256 of the projection's arrays and meta, so the same
projection always has the same name. Projected vectors are contract rows whose ``features`` hold k values,
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


def pack_arrays(meta: dict | None = None, **arrays) -> bytes:
    """``arrays`` (and ``meta`` as JSON) as the bytes of one ``.npz`` file, readable with numpy alone.

    >>> unpack_arrays(pack_arrays({"k": 2}, x=np.arange(3)))["meta"]
    {'k': 2}
    """
    buf = io.BytesIO()
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta))
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

    def residual(self, x: np.ndarray) -> np.ndarray | float:
        """How far the standardized vector lies off the projection's k-d subspace: ``|z|^2 - |z C|^2``. A photo
        of a fruit the PCA never saw has a large residual even when its projection lands near a centroid."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) * self.scale
        y = z @ self.components
        return np.clip((z * z).sum(axis=-1) - (y * y).sum(axis=-1), 0.0, None)

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
THRESHOLD_QUANTILE = 0.99     # of the index rows' distances (per label) and residuals ...
THRESHOLD_MARGIN = 1.5        # ... times this: beyond it, a photo is not that label (or no known fruit)


@dataclass
class ReferenceIndex:
    """Per-label centroids in the projection's space, with what a photo of a known fruit looks like,
    calibrated on the index's own rows (``THRESHOLD_MARGIN`` x their 99th percentile): per label, the distance
    to its centroid; for all, the residual off the projection's subspace (:meth:`Projection.residual`)."""

    labels: list[str]
    centroids: np.ndarray     # (c, k) in the projection's space
    counts: np.ndarray        # (c,)
    projection_id: str
    thresholds: np.ndarray | None = None   # (c,) distances; None (an index from before thresholds): never "unknown"
    residual_threshold: float = float("inf")

    def to_bytes(self) -> bytes:
        thresholds = self.thresholds if self.thresholds is not None else np.full(len(self.labels), np.inf)
        return pack_arrays(labels=np.array(self.labels), centroids=self.centroids.astype(np.float32),
                           counts=self.counts.astype(np.int64), projection_id=np.array(self.projection_id),
                           thresholds=np.asarray(thresholds, np.float64),
                           residual_threshold=np.array(self.residual_threshold))

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<index>") -> "ReferenceIndex":
        try:
            z = unpack_arrays(data)
            thresholds = z["thresholds"].astype(np.float64) if "thresholds" in z else None
            residual = float(z["residual_threshold"]) if "residual_threshold" in z else float("inf")
            index = cls([str(v) for v in np.atleast_1d(z["labels"])], z["centroids"].astype(np.float64),
                        np.atleast_1d(z["counts"]), str(z["projection_id"]), thresholds, residual)
        except (ValueError, KeyError, TypeError) as exc:
            raise ContractError(f"{origin}: not a reference index ({exc}); publish it again") from None
        c = len(index.labels)
        if c == 0:
            raise ContractError(f"{origin}: the index has no labels: nothing to identify with")
        if index.centroids.ndim != 2 or index.centroids.shape[0] != c or index.counts.shape != (c,):
            raise ContractError(f"{origin}: {c} labels but centroids {index.centroids.shape} and counts "
                                f"{index.counts.shape}")
        if thresholds is not None and (thresholds.shape != (c,) or np.isnan(thresholds).any()):
            raise ContractError(f"{origin}: thresholds {thresholds.shape} do not give one number per label")
        if not np.isfinite(index.centroids).all() or np.isnan(residual):
            raise ContractError(f"{origin}: centroids or the residual threshold hold NaN or infinite values")
        return index

    def check_projection(self, projection: "Projection", origin: str = "the index") -> None:
        """This index belongs to ``projection``: the same id and the same k."""
        if self.projection_id != projection.projection_id:
            raise ContractError(f"{origin} belongs to projection {self.projection_id}, not {projection.projection_id}")
        if self.centroids.shape[1] != projection.k:
            raise ContractError(f"{origin} has centroids of k={self.centroids.shape[1]}, the projection k={projection.k}")

    def rank(self, y: np.ndarray, top: int = 3, residual: float = 0.0) -> list[tuple[str, float, float]]:
        """Labels nearest to the projected vector ``y``: (label, score, distance), nearest first. The score is 1
        at a label's centroid and falls to 0 at its threshold. When the nearest label is beyond its
        threshold, or the photo's ``residual`` beyond the index's, the answer starts with :data:`UNKNOWN`
        (score 0, and the nearest distance)."""
        d = np.sqrt(((self.centroids - np.asarray(y, np.float64)[None, :]) ** 2).sum(axis=1))
        t = self.thresholds if self.thresholds is not None else np.full(len(d), np.inf)
        order = np.argsort(d, kind="stable")[:top]
        out = [(self.labels[i], float(max(0.0, 1.0 - d[i] / t[i])) if np.isfinite(t[i]) and t[i] > 0 else 1.0,
                float(d[i])) for i in order]
        nearest = order[0]
        if d[nearest] > t[nearest] or residual > self.residual_threshold:
            out.insert(0, (UNKNOWN, 0.0, float(d[nearest])))
        return out[:top]
