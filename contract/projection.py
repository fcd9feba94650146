"""The projected form of the data contract: a published PCA projection, the k-d vectors made with it on the
device, and the reference index that ``fruits-edge identify`` uses.

Artifacts (numpy ``.npz``, read with numpy alone, so the edge needs nothing more), under ``PREFIX/models/``::

    projection-<id>.npz           mean (d), scale (d: 1/std, 0 for constant columns), components (d x k),
                                  meta: model_sha256, model_name, k, run
    projection-latest-<model_sha256>.json   {"projection_id": "<id>"}: the pointer a device reads (it may
                                  only GET under models/, never list)
    index-<id>.npz                labels (c), centroids (c x k) in the projection's space, counts (c)

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
        h = hashlib.sha256()
        for a in (self.mean, self.scale, self.components):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        h.update(self.model_sha256.encode())
        return h.hexdigest()[:16]

    def project(self, x: np.ndarray) -> np.ndarray:
        """(n, d) or (d,) feature vectors -> (n, k) or (k,) float32 projections."""
        x = np.asarray(x, dtype=np.float64)
        return (((x - self.mean) * self.scale) @ self.components).astype(np.float32)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = {"model_sha256": self.model_sha256, "model_name": self.model_name, "k": self.k, "run": self.run,
                "projection_id": self.projection_id, "format": 1}
        np.savez(buf, mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                 components=self.components.astype(np.float32), meta=np.array(json.dumps(meta)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<projection>") -> "Projection":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                p = cls(z["mean"].astype(np.float64), z["scale"].astype(np.float64),
                        z["components"].astype(np.float64), meta["model_sha256"], meta.get("model_name", ""),
                        meta.get("run", ""))
        except (ValueError, KeyError, OSError) as exc:
            raise ContractError(f"{origin}: not a projection artifact ({exc})") from None
        d = p.mean.shape[0]
        if p.scale.shape != (d,) or p.components.ndim != 2 or p.components.shape[0] != d:
            raise ContractError(f"{origin}: inconsistent shapes mean {p.mean.shape}, scale {p.scale.shape}, "
                                f"components {p.components.shape}")
        if meta.get("projection_id") != p.projection_id:
            raise ContractError(f"{origin}: content does not match its projection id {meta.get('projection_id')}")
        return p

    def check_model(self, model_sha256: str, origin: str = "the projection") -> None:
        if model_sha256 != self.model_sha256:
            raise ContractError(f"{origin} was fitted on vectors of model {self.model_sha256[:12]}..., but this "
                                f"device's model is {model_sha256[:12]}...; projecting would mix two feature "
                                f"spaces. Use the same .tflite, or publish a projection for this model")


@dataclass
class ReferenceIndex:
    labels: list[str]
    centroids: np.ndarray     # (c, k) in the projection's space
    counts: np.ndarray        # (c,)
    projection_id: str

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, labels=np.array(self.labels), centroids=self.centroids.astype(np.float32),
                 counts=self.counts.astype(np.int64), projection_id=np.array(self.projection_id))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<index>") -> "ReferenceIndex":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls([str(v) for v in z["labels"]], z["centroids"].astype(np.float64), z["counts"],
                           str(z["projection_id"]))
        except (ValueError, KeyError, OSError) as exc:
            raise ContractError(f"{origin}: not a reference index ({exc})") from None

    def rank(self, y: np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        """Labels nearest to the projected vector ``y``, with softmax scores over negative distances."""
        d = np.sqrt(((self.centroids - y[None, :]) ** 2).sum(axis=1))
        z = -(d - d.min()) / max(float(np.median(d) - d.min()), 1e-9) * 4.0
        p = np.exp(z) / np.exp(z).sum()
        order = np.argsort(d)[:top]
        return [(self.labels[i], float(p[i])) for i in order]
