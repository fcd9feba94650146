"""The data contract on its own: what a file and a row may hold (the messages users read), the key layout
(quoting, validation), labels from paths, and the import graph that keeps the contract at the bottom."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contract import layout
from contract.errors import ContractError
from contract.vectors import conform_table, features_array, features_matrix, safe_inverse, validate_table
from vectors_for_tests import contract_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(["features"]), "<t>: missing column(s) features"),
    (lambda t: t.set_column(0, "image_id", pa.array(["nope"] + t.column(0).to_pylist()[1:])),
     "<t>: row 0: image_id 'nope' is not a sha256"),
    (lambda t: t.set_column(0, "image_id", pa.array([None] + t.column(0).to_pylist()[1:], pa.string())),
     "<t>: row 0: image_id is null"),
    (lambda t: t.set_column(5, "features", pa.array([[1.0] * 3] + t.column(5).to_pylist()[1:], pa.list_(pa.float32()))),
     "<t>: row 0: features has 3 values, expected 1280"),
    (lambda t: t.set_column(5, "features", pa.array([None] + t.column(5).to_pylist()[1:], pa.list_(pa.float32()))),
     "<t>: row 0: null features"),
    (lambda t: t.set_column(5, "features", pa.array([[float("nan")] * 1280] + t.column(5).to_pylist()[1:],
                                                    pa.list_(pa.float32()))),
     "<t>: row 0: NaN or infinite value in features"),
    (lambda t: t.set_column(5, "features", pa.array([[None] * 1280] + t.column(5).to_pylist()[1:],
                                                    pa.list_(pa.float32()))),
     "<t>: row 0: null value in features"),
    (lambda t: t.set_column(6, "model_sha256", pa.array(["x"] * t.num_rows)), "<t>: row 0: model_sha256 'x' is not a sha256"),
    (lambda t: t.set_column(5, "features", t.column(5).cast(pa.list_(pa.float64()))),
     "<t>: column features has type list<item: double>; the contract needs a list of float32"),
    (lambda t: t.set_column(3, "width", pa.array(["100"] * t.num_rows)), "<t>: column width has type string"),
])
def test_validate_table_names_the_row_the_column_and_the_reason(change, message):
    with pytest.raises(ContractError) as info:
        validate_table(change(contract_table(3)), origin="<t>")
    assert str(info.value).startswith(message), str(info.value)


def test_conform_table_gives_every_row_its_reason_and_keeps_the_rest():
    t = contract_table(4, width=pa.int64())
    t = t.set_column(3, "width", pa.array([1, 2**40, 3, 4], pa.int64()))
    t = t.set_column(5, "features", pa.array(t.column(5).to_pylist()[:2] + [[np.inf] * 1280, None],
                                             pa.list_(pa.float32())))
    out, reasons = conform_table(t, origin="x")
    assert reasons.to_pylist() == [None, f"width {2**40} does not fit int32", "NaN or infinite value in features",
                                   "null features"]
    assert out.num_rows == 4 and out.column("width").to_pylist() == [1, None, 3, 4]


def test_features_round_trip_and_safe_inverse():
    x = np.random.RandomState(0).rand(5, 7).astype(np.float32)
    np.testing.assert_array_equal(features_matrix(features_array(x)), x.astype(np.float64))
    assert features_matrix(features_array(np.zeros((0, 7)))).shape == (0, 0)
    np.testing.assert_array_equal(safe_inverse([2.0, 0.0, 4.0]), [0.5, 0.0, 0.25])
    with pytest.raises(ContractError, match="expected 8"):
        features_matrix(features_array(x), dim=8)


def test_keys_quote_labels_and_refuse_unsafe_names():
    key = layout.raw_object_key("team", "phone-1", "Pomme / rouge\n", "ab" * 32, ".JPG")
    assert key == f"team/raw/client=phone-1/label=Pomme%20%2F%20rouge%0A/{'ab' * 32}.jpg"
    assert layout.label_from_path(key) == "Pomme %2F rouge\n", "a label is one folder name: its '/' stays encoded"
    assert layout.label_from_path("Training/Lime/1_100.jpg") == "Lime" and layout.label_from_path("x.jpg") is None
    assert layout.vectors_object_key("", "a" * 64, "p", ["y", "x"]) == layout.vectors_object_key("", "a" * 64, "p", ["x", "y"])
    for bad, call in (("client_id='a/b'", lambda: layout.vectors_object_key("t", "a" * 64, "a/b", ["x"])),
                      ("model_sha256='zz'", lambda: layout.vectors_prefix("t", "zz")),
                      ("prefix '../x'", lambda: layout.check_root("../x")),
                      ("prefix 'a//b'", lambda: layout.check_root("a//b")),
                      ("run id 'a/b'", lambda: layout.run_prefix("t", "a/b")),
                      ("photo extension '.j/p'", lambda: layout.raw_object_key("t", "p", None, "a" * 64, ".j/p"))):
        with pytest.raises(ContractError, match=bad.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            call()


def test_every_area_is_reachable_from_its_key_functions():
    from bootstrap.policies import example_keys

    for name, key in example_keys("team").items():
        area = layout.area_of("team", key)
        assert (area.name if area else "other") == name, key


# The import graph between top-level packages: imports run downwards.
ALLOWED = {
    "contract": set(),
    "featurizer": {"contract"},
    "models": {"contract", "featurizer"},
    "edge_client": {"contract", "featurizer", "models"},
    "cloud_pca": {"contract", "featurizer", "models"},
    "web": {"contract", "featurizer", "models"},   # the phone's web app: its Python side builds, serves, drives it
    "bootstrap": {"contract", "cloud_pca", "models"},
    "demo": {"contract", "featurizer", "models", "edge_client", "cloud_pca", "bootstrap", "web"},
}
PACKAGES = set(ALLOWED)


def import_graph() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules (of the importing package) that import it."""
    graph: dict[str, dict[str, set[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES and top != package:
                        graph[package].setdefault(name if top == "models" else top, set()).add(
                            path.relative_to(ROOT).as_posix())
    return graph


def test_imports_run_downwards():
    """contract <- featurizer <- edge_client / cloud_pca / models / web <- bootstrap <- demo. The device side
    (edge_client) imports `models` only for the committed files' location, never the export code."""
    graph = import_graph()
    for package, imported in graph.items():
        tops = {name.split(".")[0] for name in imported}
        assert tops <= ALLOWED[package], (package, tops - ALLOWED[package], imported)
    assert set(graph["edge_client"]) <= {"contract", "featurizer", "models"}, graph["edge_client"]
    assert set(graph["cloud_pca"]) <= {"contract", "featurizer", "models"}, graph["cloud_pca"]
    assert set(graph["web"]) <= {"contract", "featurizer", "models"}, graph["web"]


def print_graph() -> str:
    """The graph as text (the closing note's figure): ``python -c 'from test_contract import print_graph'``."""
    return "\n".join(f"{p:11s} -> {', '.join(sorted(i)) or '(nothing)'}" for p, i in sorted(import_graph().items()))
