"""The model fingerprint (sha256 of the ``.tflite``) and the model card: what the edge and the cloud must agree
on to produce the same vectors."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import ContractError

FEATURE_DIM = 1280
# What the model family can output: MobileNetV2's last convolution ends in ReLU6 and global average pooling follows,
# so every feature of every honest vector lies in [0, 6] (an int8 model's dequantization gives a narrower range,
# which its card states). The contract refuses anything else (contract.vectors.conform_table).
OUTPUT_RANGE = (0.0, 6.0)
RANGE_TOLERANCE = 1e-4     # float32 rounding of an average of values at the bound


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, hex: the fingerprint of a .tflite (and the ``image_id`` of a photo file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


@dataclass
class ModelCard:
    """What the edge and the cloud must agree on to produce the same vectors."""

    name: str
    input_size: int
    output_dim: int
    precision: str
    sha256: str
    preprocessing: dict[str, Any]
    weights: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    output_range: list[float] = field(default_factory=lambda: list(OUTPUT_RANGE))   # [low, high], measured at export
    # The mean feature vector over the export's calibration photos: a fixed point to measure angles around, so that
    # two different photos' vectors (all positive, sharing one strong mean direction) are not "near" each other
    # (the job's near-copy signatures, cloud_pca.trust). Empty in cards from before it.
    feature_center: list[float] = field(default_factory=list)
    # The calibration photos' largest distance from that center: vectors far beyond it are not what a photo gives
    # (the job's plausibility screen for anonymous rows, cloud_pca.trust). 0 in cards from before it.
    feature_radius: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def card_path_for(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def load_model_card(model_path: str | os.PathLike, *, verify: bool = True) -> ModelCard:
    """Read the card next to ``model_path`` and (by default) check that the file is the one it describes."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ContractError(f"model file {model_path} does not exist")
    with open(model_path, "rb") as f:
        magic = f.read(8)
    # A TFLite flatbuffer carries the identifier "TFL3" at bytes 4..8.
    if magic[4:8] != b"TFL3":
        raise ContractError(f"{model_path} is not a .tflite model (no TFL3 identifier)")
    card_path = card_path_for(model_path)
    if not card_path.is_file():
        raise ContractError(f"model card {card_path} is missing: every .tflite needs its card next to it")
    try:
        card = ModelCard(**json.loads(card_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ContractError(f"model card {card_path} is not valid: {exc}") from None
    if verify:
        actual = file_sha256(model_path)
        if actual != card.sha256:
            raise ContractError(
                f"model card {card_path} does not match {model_path.name}: card sha256 {card.sha256[:12]}..., "
                f"file sha256 {actual[:12]}... (re-export the model or restore its card)")
    if card.output_dim != FEATURE_DIM:
        raise ContractError(f"model card {card_path}: output_dim={card.output_dim}, the contract needs {FEATURE_DIM}")
    low, high = (card.output_range + [None, None])[:2] if isinstance(card.output_range, list) else (None, None)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))
            and OUTPUT_RANGE[0] <= low <= high <= OUTPUT_RANGE[1]):
        raise ContractError(f"model card {card_path}: output_range={card.output_range} must be [low, high] within the "
                            f"contract's {list(OUTPUT_RANGE)}")
    return card
