"""The committed models: MobileNetV2 feature extractors as ``.tflite`` files, each with its JSON model card
(``contract.card``), found as package resources. The export code (``models.export``, TensorFlow) is
imported only by ``fruits-export``; importing this package costs nothing.

>>> model_path().name
'mobilenetv2_160_fp32.tflite'
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "mobilenetv2_160_fp32.tflite"


def model_path(name: str | None = None) -> Path:
    """A committed model file by name (default :data:`DEFAULT_MODEL`; ``FRUITS_MODEL`` overrides the default
    with any path)."""
    if name is None and os.environ.get("FRUITS_MODEL"):
        return Path(os.environ["FRUITS_MODEL"])
    return Path(str(resources.files(__name__).joinpath(name or DEFAULT_MODEL)))


def committed() -> list[Path]:
    """Every committed ``.tflite``, sorted."""
    return sorted(Path(str(p)) for p in resources.files(__name__).iterdir() if p.name.endswith(".tflite"))
