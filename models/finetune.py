"""Fine-tune MobileNetV2's top blocks on fruit photos, so that its 1280-d vectors carry to photos out of the lab.

Chosen by measurement (docs/models.md; ``./run bench identify``): the stand-in's features (ImageNet, with blocks
13-16 tuned on dog breeds) named 72.9% of shop photos' species right by 1-NN on shop references and 14% from lab
references. What is trained, on 2 CPU cores in minutes:

- the network up to ``block_12_add`` stays as it is (its 10 x 10 x 96 activations are computed once per photo and
  per augmented copy, and kept in memory as float16);
- blocks 15-16 and ``Conv_1`` are trained (blocks 13-14 too with ``frozen_to=12``), with a softmax over the
  training folders' labels on top (dropped after training: the model stays a 1280-d feature extractor);
- each photo is seen as it is and in :data:`AUGMENT` augmented copies (a random crop of 30-100% of its area, a
  mirror, brightness, contrast and colour within 25%), classes weighted alike, label smoothing 0.1.

Only what training changed is kept: the weights of the trained layers, as one ``.npz`` beside the models
(:data:`TOP_WEIGHTS`), which :func:`models.export.apply_weights` sets on top of the base weights. The export from
base + that file is deterministic (the test re-exports it and compares the fp32 bytes); the training itself is not
(TensorFlow's CPU kernels add in threads), and its card records what it was trained on.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.export import ExportError

log = logging.getLogger(__name__)

CUT = "block_12_add"                 # what stays: the network up to here
AUGMENT = 4                          # augmented copies of each training photo
EPOCHS = 6
LEARNING_RATE = 3e-4
LABEL_SMOOTHING = 0.1
BATCH = 64
TOP_WEIGHTS = "mobilenetv2_fruits_top.npz"


@dataclass
class Photo:
    path: Path
    label: str


def training_photos(folders: Sequence[str | Path], hold_out: Sequence[str] = (), drop_film: str = "") -> list[Photo]:
    """The photos of class folders (``<folder>/<label>/<photo>``), labels from the class folder, sorted; classes in
    ``hold_out`` left out (the backbone must never see them: ``never sent`` is measured on them), and in a Fruits-360
    folder the frames of ``drop_film`` (the film the lab benchmarks test on: Fruits-360's Test frames are other frames
    of its Training films, so a backbone trained on that film's Training frames has seen the test's fruit turning;
    ``featurizer.preprocess.film_split``; "" keeps every frame, as the shipped model does: a model the lab benchmark
    measures film-disjoint drops :data:`featurizer.preprocess.LAB_FILM`)."""
    from featurizer.preprocess import IMAGE_EXTENSIONS, film_split

    out = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ExportError(f"--fine-tune {folder}: not a folder of class folders")
        keep = film_split(folder, drop_film) or (lambda name: True)
        for cls in sorted(d for d in folder.iterdir() if d.is_dir()):
            if cls.name in hold_out:
                continue
            out += [Photo(p, cls.name) for p in sorted(cls.iterdir())
                    if p.suffix.lower() in IMAGE_EXTENSIONS and keep(p.name)]
    if not out:
        raise ExportError(f"--fine-tune {', '.join(map(str, folders))}: no photos in class folders")
    return out


def augment(img, rng: np.random.Generator):
    """A random crop (30-100% of the area, aspect 3:4 to 4:3), maybe mirrored, brightness, contrast and colour
    within 25%: the photo as a person might have framed it, in other light."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    for _ in range(10):
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if cw <= w and ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((x, y, x + cw, y + ch))
            break
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.75, 1.25)))
    return img


def lower_and_top(base):
    """(the network up to :data:`CUT`, the rest as a model of its own on those activations), sharing the layers."""
    import keras

    lower = keras.Model(base.input, base.get_layer(CUT).output)
    names = [layer.name for layer in base.layers]
    start = names.index(CUT) + 1
    inp = keras.Input(lower.output.shape[1:])
    tensors = {CUT: inp}
    for layer in base.layers[start:]:
        args = [tensors[t._keras_history[0].name] for t in layer._inbound_nodes[0].input_tensors]
        tensors[layer.name] = layer(args if len(args) > 1 else args[0])
    return lower, keras.Model(inp, tensors[base.layers[-1].name])


def activations(lower, photos: list[Photo], size: int, copies: int, seed: int, *, progress=None) -> np.ndarray:
    """Each photo's activations at :data:`CUT`, as it is and in ``copies`` augmented copies (float16,
    (len(photos) * (1 + copies), h, w, c), photo-major)."""
    from featurizer.preprocess import decode, read_photo, to_input

    rng = np.random.default_rng(seed)
    out, chunk = [], []
    for i, photo in enumerate(photos):
        img, _, _ = decode(read_photo(photo.path), size)
        chunk += [to_input(img if c == 0 else augment(img, rng), size) for c in range(1 + copies)]
        if len(chunk) >= 256 or i == len(photos) - 1:
            out.append(lower.predict(np.stack(chunk), batch_size=64, verbose=0).astype(np.float16))
            chunk = []
            if progress:
                progress(i + 1, len(photos))
    return np.concatenate(out)


def train_top(top, x: np.ndarray, labels: list[str], *, epochs: int = EPOCHS, frozen_to: int = 14, seed: int = 0
              ) -> dict:
    """Train ``top`` (in place) with a softmax over ``labels`` on the activations ``x``; returns what it did."""
    import keras

    keras.utils.set_random_seed(seed)
    classes = sorted(set(labels))
    y = np.array([classes.index(v) for v in labels])
    frozen = tuple(f"block_{i}_" for i in range(13, frozen_to + 1))
    for layer in top.layers:
        layer.trainable = not layer.name.startswith(frozen)
    inp = keras.Input(x.shape[1:])
    head = keras.layers.Dense(len(classes), activation="softmax", name="fruits_head")(
        keras.layers.Dropout(0.3)(top(inp)))
    clf = keras.Model(inp, head)
    clf.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING), metrics=["accuracy"])
    counts = np.bincount(y, minlength=len(classes))
    weight = (len(y) / (len(classes) * counts))[y].astype(np.float32)
    history = clf.fit(x.astype(np.float32), np.eye(len(classes), dtype=np.float32)[y], sample_weight=weight,
                      batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
    return {"classes": classes, "epochs": epochs, "trained_from": f"block_{frozen_to + 1}",
            "final_accuracy": round(float(history.history["accuracy"][-1]), 4),
            "final_loss": round(float(history.history["loss"][-1]), 4)}


def trained_weights(top, frozen_to: int = 14) -> dict[str, np.ndarray]:
    """The weights training changed, as arrays named ``<layer>/<index>`` (batch-norm statistics included)."""
    frozen = tuple(f"block_{i}_" for i in range(13, frozen_to + 1))
    out = {}
    for layer in top.layers:
        if layer.name.startswith(frozen) or not layer.weights:
            continue
        for i, w in enumerate(layer.get_weights()):
            out[f"{layer.name}/{i}"] = np.asarray(w, np.float32)
    return out


def fine_tune(weights: str, folders: Sequence[str | Path], out: str | Path, *, input_size: int = 160,
              hold_out: Sequence[str] = (), epochs: int = EPOCHS, copies: int = AUGMENT, seed: int = 0,
              drop_film: str = "", progress=None) -> Path:
    """Train the top blocks on ``folders``' photos and write the trained weights to ``out`` (an ``.npz`` with its
    meta: base weights, photos, classes held out, training figures)."""
    from models.export import build_extractor

    photos = training_photos(folders, hold_out, drop_film)
    base = build_extractor(weights, input_size)
    lower, top = lower_and_top(base)
    log.info("fine-tuning on %d photos of %d classes (%d augmented copies each)", len(photos),
             len({p.label for p in photos}), copies)
    x = activations(lower, photos, input_size, copies, seed, progress=progress)
    labels = [p.label for p in photos for _ in range(1 + copies)]
    did = train_top(top, x, labels, epochs=epochs, seed=seed)
    digest = hashlib.sha256("\n".join(f"{p.label}/{p.path.name}" for p in photos).encode()).hexdigest()[:16]
    meta = {"base": str(weights), "input_size": input_size, "cut": CUT, "photos": len(photos),
            "folders": [str(f) for f in folders], "photos_digest": digest, "held_out": sorted(hold_out),
            "dropped_film": drop_film,
            "augmented_copies": copies, "seed": seed, "label_smoothing": LABEL_SMOOTHING,
            "learning_rate": LEARNING_RATE, **did}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, meta=np.array(json.dumps(meta)), **trained_weights(top))
    return out
