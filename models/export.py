"""Export MobileNetV2 (no classifier, global average pooling, 1280-d) to TFLite at fp32, fp16 and int8.

Needs the ``export`` group (TensorFlow).  TensorFlow is imported inside the functions, so importing this
module stays cheap and the edge client never pays for it.

    fruits-export --weights imagenet --input-size 224 --out models/
    fruits-export --weights .cache/standin/dog_breed_mobilenetv2.h5 --input-size 160 --out models/
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from contract import FEATURE_DIM, ModelCard, file_sha256
from contract.errors import FruitsError
from contract.card import card_path_for
from contract.vectors import cosine
from featurizer.preprocess import IMAGE_EXTENSIONS, PREPROCESSING, ImageRejected, preprocess
from models.quantize import convert_int8_corrected

log = logging.getLogger(__name__)

INPUT_SIZES = (96, 128, 160, 192, 224)
PRECISIONS = ("fp32", "fp16", "int8")
PARITY_GOALS = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.99}   # fp32: the worst photo; fp16, int8: the mean


class ExportError(FruitsError, ValueError):
    """A user error in an export request (bad weights file, size, calibration set)."""


@dataclass
class ExportResult:
    path: Path
    card: ModelCard


def model_name(input_size: int, precision: str) -> str:
    return f"mobilenetv2_{input_size}_{precision}"


# ------------------------------------------------------------------------------------------- the model
def _find_mobilenetv2(model):
    """The MobileNetV2 inside ``model`` (the model itself or a nested sub-model), or None."""
    names = {layer.name for layer in model.layers}
    if {"Conv_1", "block_16_project", "out_relu"} <= names:
        return model
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found = _find_mobilenetv2(layer)
            if found is not None:
                return found
    return None


def build_extractor(weights: str, input_size: int, top_weights: str | os.PathLike | None = None):
    """A Keras model: (input_size, input_size, 3) in [-1, 1] -> 1280 floats (global average pooling); with
    ``top_weights``, the layers fine-tuned on fruit photos (:mod:`models.finetune`) set on top of ``weights``."""
    model = _base_extractor(weights, input_size)
    if top_weights is not None:
        apply_weights(model, top_weights)
    return model


def apply_weights(model, path: str | Path) -> dict:
    """Set the layers a top-weights file names (the layers :mod:`models.finetune` trained, ``<layer>/<index>`` arrays
    and a ``meta`` JSON) on a model from :func:`build_extractor`; returns its meta. Every layer it names must exist with
    the same shapes."""
    meta, layers = read_top_weights(path)
    names = {layer.name: layer for layer in model.layers}
    for name, ws in sorted(layers.items()):
        if name not in names:
            raise ExportError(f"--top-weights {path}: layer {name} is not in the model")
        current = names[name].get_weights()
        new = [ws[i] for i in range(len(ws))]
        if len(new) != len(current) or any(a.shape != b.shape for a, b in zip(new, current)):
            raise ExportError(f"--top-weights {path}: layer {name}'s weights do not fit the model")
        names[name].set_weights(new)
    return meta


def read_top_weights(path: str | os.PathLike) -> tuple[dict, dict[str, dict[int, np.ndarray]]]:
    """A top-weights file's meta and its arrays by layer name and index; one :class:`ExportError` if unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
    except (OSError, ValueError) as exc:
        raise ExportError(f"--top-weights {path}: not a readable .npz ({exc})") from None
    layers: dict[str, dict[int, np.ndarray]] = {}
    for key, value in arrays.items():
        name, _, i = key.rpartition("/")
        if not i.isdigit():
            raise ExportError(f"--top-weights {path}: {key!r} is not <layer>/<index>")
        layers.setdefault(name, {})[int(i)] = value
    return meta, layers


def _base_extractor(weights: str, input_size: int):
    import keras

    # Keras names unnamed layers (the input, the pooling) by how many it has built in this process: a fresh session
    # gives every export the same names, so the same .tflite bytes whatever was built before
    keras.backend.clear_session()

    if input_size not in INPUT_SIZES:
        raise ExportError(f"--input-size={input_size} must be one of {', '.join(map(str, INPUT_SIZES))}")
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        return keras.applications.MobileNetV2(input_shape=shape, include_top=False, pooling="avg",
                                              weights="imagenet")
    path = Path(weights)
    if not path.is_file():
        raise ExportError(f"--weights {weights}: no such file (use 'imagenet' or a .keras/.h5 file)")
    try:
        loaded = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ExportError(f"--weights {weights}: Keras cannot load it ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from None
    base = _find_mobilenetv2(loaded)
    if base is None:
        raise ExportError(f"--weights {weights}: no MobileNetV2 inside (looked for its layers Conv_1, "
                          f"block_16_project and out_relu in the model and its nested models)")
    match = re.match(r"mobilenetv2_([0-9.]+)_", base.name)
    alpha = float(match.group(1)) if match else 1.0
    fresh = keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False,
                                           pooling="avg", weights=None)
    try:
        fresh.set_weights(base.get_weights())
    except ValueError as exc:
        raise ExportError(f"--weights {weights}: its MobileNetV2 does not match alpha={alpha}: {exc}") from None
    if fresh.output_shape[-1] != FEATURE_DIM:
        raise ExportError(f"--weights {weights}: output has {fresh.output_shape[-1]} features, need {FEATURE_DIM}")
    return fresh


# ------------------------------------------------------------------------------------------ conversion
def convert(model, precision: str, representative: Callable[[], Iterable[list[np.ndarray]]] | None = None) -> bytes:
    """Keras model -> .tflite bytes; fp16 stores float16 weights, int8 is full-integer with float I/O."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ExportError(f"--precision={precision} must be one of {', '.join(PRECISIONS)}")
    # A fixed batch of 1 ([1, s, s, 3], not [-1, s, s, 3]): LiteRT.js (the phones' web app) runs only models
    # whose shapes are static, and every side must load the same file. Python callers feed one image at a time.
    import keras

    size = int(model.input_shape[1])
    single = keras.Input(batch_shape=(1, size, size, 3), name="input")
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(single, model(single)))
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if representative is None:
            raise ExportError("int8 needs calibration images (--calibration DIR)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Float input and output: callers feed the same [-1, 1] floats and read floats, whatever the precision.
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    # Keras prints its SavedModel signature (hundreds of lines) to stdout while converting; keep it out.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def load_inputs(folder, size: int, limit: int | None = None) -> np.ndarray:
    """Preprocessed images of a folder or folders (recursive, sorted), as (n, size, size, 3) float32."""
    return load_named_inputs(folder, size, limit)[0]


def load_named_inputs(folder, size: int, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """:func:`load_inputs` and the paths (relative to their folder) of the images it kept, in the same order; with
    several folders, the first ``limit`` photos spread over them (every n-th photo of their sorted union)."""
    folders = [Path(f) for f in (folder if isinstance(folder, (list, tuple)) else [folder])]
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise ExportError(f"calibration folder {folder} does not exist")
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if limit is not None and len(files) > limit and len(folders) > 1:
        files = files[::-(-len(files) // limit)]
    folder = Path(os.path.commonpath([str(f) for f in folders])) if len(folders) > 1 else folders[0]
    arrays, names = [], []
    for p in files:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            arrays.append(preprocess(p.read_bytes(), size)[0])
            names.append(p.relative_to(folder).as_posix())
        except ImageRejected as exc:
            log.warning("calibration image %s skipped: %s", p, exc)
    if not arrays:
        raise ExportError(f"calibration folder {folder} holds no readable image "
                          f"({', '.join(IMAGE_EXTENSIONS)})")
    return np.stack(arrays), names


def tflite_features(model_bytes: bytes, inputs: np.ndarray, threads: int = 2) -> np.ndarray:
    """Run a .tflite on preprocessed inputs with LiteRT (the runtime the edge and cloud use)."""
    from featurizer.runtime import interpreter_class

    interp = interpreter_class()(model_content=model_bytes, num_threads=threads)
    interp.allocate_tensors()
    i = interp.get_input_details()[0]["index"]
    o = interp.get_output_details()[0]["index"]
    out = np.empty((len(inputs), FEATURE_DIM), np.float32)
    for n, x in enumerate(inputs):
        interp.set_tensor(i, x[None])
        interp.invoke()
        out[n] = interp.get_tensor(o)[0]
    return out


def output_range(model_bytes: bytes, outputs: np.ndarray) -> tuple[float, float]:
    """The range a model's features can take: a quantized output's dequantization range (the int8 model's: its last
    int8 tensor's scale and zero point), else the contract's ReLU6 bound; checked against ``outputs``, the features
    measured on the parity photos (a model whose outputs fall outside is refused)."""
    from contract.card import OUTPUT_RANGE, RANGE_TOLERANCE
    from featurizer.runtime import interpreter_class

    interp = interpreter_class()(model_content=model_bytes)
    interp.allocate_tensors()
    low, high = OUTPUT_RANGE
    ops = [op for op in interp._get_ops_details() if op["op_name"] == "DEQUANTIZE"]
    out_index = interp.get_output_details()[0]["index"]
    for op in ops:
        if out_index in op["outputs"]:
            detail = next(d for d in interp.get_tensor_details() if d["index"] == op["inputs"][0])
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            low, high = max(low, scale * (info.min - zero)), min(high, scale * (info.max - zero))
    seen = float(outputs.min()), float(outputs.max())
    if seen[0] < low - RANGE_TOLERANCE or seen[1] > high + RANGE_TOLERANCE:
        raise ExportError(f"the model's features span [{seen[0]:.6g}, {seen[1]:.6g}], outside its range "
                          f"[{low:.6g}, {high:.6g}]: not a MobileNetV2 feature extractor ending in ReLU6")
    return float(low), float(high)


def feature_center(model_bytes: bytes, calibration: np.ndarray) -> tuple[list[float], float]:
    """The mean feature vector over the calibration photos (6 significant digits) and their largest distance from it:
    the card's ``feature_center`` and ``feature_radius``."""
    x = tflite_features(model_bytes, calibration).astype(np.float64)
    center = np.array([float(f"{v:.6g}") for v in x.mean(axis=0)])
    return center.tolist(), float(f"{np.linalg.norm(x - center, axis=1).max():.6g}")


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.array([cosine(x, y) for x, y in zip(a, b)])
    worst = int(np.argmin(cos))
    return {"images": int(len(cos)), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "worst_image_index": worst}


# ---------------------------------------------------------------------------------------------- export
def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _versions() -> dict:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def export(weights: str, *, input_size: int, precisions: Sequence[str] = PRECISIONS,
           calibration: np.ndarray, parity: np.ndarray, out_dir: str | os.PathLike,
           provenance: dict | None = None, calibration_source: str = "", parity_source: str = "",
           parity_names: Sequence[str] | None = None, top_weights: str | os.PathLike | None = None
           ) -> list[ExportResult]:
    """Export the requested precisions into ``out_dir``; every .tflite gets its model card.

    ``calibration`` and ``parity`` are preprocessed image batches (see :func:`load_inputs`); the parity
    set should be held out from calibration.
    """
    for p in precisions:
        if p not in PRECISIONS:
            raise ExportError(f"--precision={p} must be one of {', '.join(PRECISIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_extractor(weights, input_size, top_weights)
    keras_ref = model.predict(parity, batch_size=32, verbose=0).astype(np.float32)

    def representative():
        for x in calibration:
            yield [x[None].astype(np.float32)]

    blobs: dict[str, bytes] = {}
    int8_info: dict = {}
    # fp32 first: it is the reference the reduced precisions are compared with.
    for precision in sorted(set(precisions) | {"fp32"}, key=PRECISIONS.index):
        log.info("converting %s", precision)
        if precision == "int8":
            # Plain post-training int8 loses too much here (cosine 0.936); see models/quantize.py.
            blobs[precision], int8_info = convert_int8_corrected(
                model, calibration, lambda m: convert(m, "int8", representative), log=log)
        else:
            blobs[precision] = convert(model, precision, representative)
    fp32_out = tflite_features(blobs["fp32"], parity)
    weights_info = dict(provenance or {"source": weights})
    results = []
    for precision in precisions:
        data = blobs[precision]
        ours = fp32_out if precision == "fp32" else tflite_features(data, parity)
        ref, ref_name = (keras_ref, "keras fp32") if precision == "fp32" else (fp32_out, "tflite fp32")
        stats = cosine_stats(ours, ref)
        stats.update(reference=ref_name, goal=PARITY_GOALS[precision], images_from=parity_source)
        if parity_names is not None:
            stats["worst_image"] = parity_names[stats["worst_image_index"]]
        if precision == "int8":
            stats["calibration_images"] = int(len(calibration))
            stats["calibration_from"] = calibration_source
            stats["bias_correction"] = int8_info
        name = model_name(input_size, precision)
        path = out_dir / f"{name}.tflite"
        _write_atomic(path, data)
        low, high = output_range(data, ours)
        center, radius = feature_center(data, calibration)
        card = ModelCard(
            name=name, input_size=input_size, output_dim=FEATURE_DIM, precision=precision,
            sha256=file_sha256(path), size_bytes=len(data), preprocessing=dict(PREPROCESSING),
            weights=weights_info, export={"tool": "fruits-export", **_versions(),
                                          "input": "float32 [1, s, s, 3]", "output": "float32 [1, 1280]"},
            parity=stats, output_range=[low, high], feature_center=center, feature_radius=radius)
        _write_atomic(card_path_for(path), card.to_json().encode())
        log.info("%s: %d bytes, cosine vs %s min %.6f mean %.6f", path.name, len(data), ref_name,
                 stats["cosine_min"], stats["cosine_mean"])
        results.append(ExportResult(path, card))
    return results



def export_models(weights: str, *, input_size: int, out_dir: str | os.PathLike,
                  precisions: Sequence[str] = PRECISIONS, calibration_dir: str | os.PathLike | None = None,
                  parity_dir: str | os.PathLike | None = None, tmp_dir: str | os.PathLike | None = None,
                  top_weights: str | os.PathLike | None = None) -> list[ExportResult]:
    """:func:`export` from photos: ``calibration_dir`` for the int8 calibration and the parity figures (``parity_dir``
    for held-out parity photos), or by default generated synthetic fruit photos (seed 101 to calibrate, a held-out
    seed 202 for parity). Weights given as the offline stand-in get its provenance in the cards; ``top_weights`` (the
    fine-tuned layers, :mod:`models.finetune`) theirs."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise ExportError("export needs TensorFlow: pip install 'fruits[export]'")
    from models.standin import PROVENANCE, standin_path

    if calibration_dir is not None:
        cal_dir = [Path(p) for p in (calibration_dir if isinstance(calibration_dir, (list, tuple)) else [calibration_dir])]
        cal_src = ", ".join(map(str, cal_dir))
        parity_dir = [Path(p) for p in (parity_dir if isinstance(parity_dir, (list, tuple)) else [parity_dir])] \
            if parity_dir is not None else cal_dir
        parity_src = ", ".join(map(str, parity_dir)) if parity_dir is not cal_dir else f"{cal_src} (same as calibration)"
    else:
        from models.synthetic import generate

        tmp = Path(tmp_dir or tempfile.mkdtemp(prefix="fruits-calibration-"))
        cal_dir = generate(tmp / "calibration", per_class=20, seed=101)
        parity_dir = generate(tmp / "parity", per_class=10, seed=202)
        cal_src = "synthetic fruit photos, seed 101, 20 per class (models.synthetic)"
        parity_src = "held-out synthetic photos, seed 202"
    calibration = load_inputs(cal_dir, input_size)
    parity, parity_names = load_named_inputs(parity_dir, input_size, limit=200)
    provenance = {"source": "keras.applications.MobileNetV2(weights='imagenet')"} if weights == "imagenet" else None
    if weights != "imagenet" and Path(weights).resolve() == standin_path(fetch=False).resolve():
        provenance = PROVENANCE
    if top_weights is not None:
        meta, _ = read_top_weights(top_weights)   # readable before the long work; its layers checked on the model
        provenance = {**(provenance or {"source": weights}), "fine_tuned": {
            "file": Path(top_weights).name, "sha256": hashlib.sha256(Path(top_weights).read_bytes()).hexdigest(),
            **{k: v for k, v in meta.items() if k != "classes"}, "classes": len(meta.get("classes", []))}}
    return export(weights, input_size=input_size, precisions=precisions, calibration=calibration, parity=parity,
                  out_dir=out_dir, provenance=provenance, calibration_source=cal_src, parity_names=parity_names,
                  parity_source=parity_src, top_weights=top_weights)
