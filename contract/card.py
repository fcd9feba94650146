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
    return card
