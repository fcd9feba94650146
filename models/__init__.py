"""The committed models: MobileNetV2 feature extractors as ``.tflite`` files, each with its JSON model card
(``contract.card``), found as package resources. The export code (``models.export``, TensorFlow) is
imported only by ``fruits-export``; importing this package costs nothing.

>>> model_path().name
'mobilenetv2_160_int8.tflite'

The default is the full-integer int8 model (2.7 MB; 2.2 MB gzipped): what a phone downloads on its first visit, and,
one model for the whole system, what every side vectorizes with. On real Fruits-360 photos it identifies as the fp32
model does (``./run bench identify``, 10 rounds: named right 96.6% vs 96.9%, precision 99.3% vs 99.4%, never-sent
fruits refused 87.7% vs 86.7%), and its integer kernels give the page's vectors bit for bit equal to the Python edge's
in every engine (fp32's differ in WebKit, whose LiteRT.js build has no relaxed SIMD).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "mobilenetv2_160_int8.tflite"


def model_path(name: str | None = None) -> Path:
    """A committed model file by name (default :data:`DEFAULT_MODEL`; ``FRUITS_MODEL`` overrides the default
    with any path)."""
    if name is None and os.environ.get("FRUITS_MODEL"):
        return Path(os.environ["FRUITS_MODEL"])
    return Path(str(resources.files(__name__).joinpath(name or DEFAULT_MODEL)))


def committed() -> list[Path]:
    """Every committed ``.tflite``, sorted."""
    return sorted(Path(str(p)) for p in resources.files(__name__).iterdir() if p.name.endswith(".tflite"))
