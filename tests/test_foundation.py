"""Layout, install groups, the S3 round trip through Spark, and the synthetic data."""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bootstrap.requirements import requirement_closure

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["fruits-edge", "fruits-cloud"])
def test_console_scripts_help(script):
    proc = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and script in proc.stdout


def test_edge_group_pulls_in_neither_tensorflow_nor_spark():
    edge = requirement_closure("fruits", {"edge"})
    assert {"ai-edge-litert", "pillow", "pyarrow", "boto3", "numpy"} <= edge
    forbidden = {n for n in edge if n.startswith(("tensorflow", "keras", "pyspark", "tf-keras", "py4j"))}
    assert not forbidden, f"the edge group pulls in {forbidden}"
    # The closure is computed for real: the export group does reach TensorFlow.
    assert "tensorflow-cpu" in requirement_closure("fruits", {"export"})


def test_edge_modules_import_without_tensorflow_or_spark():
    code = ("import sys, edge_client.cli, edge_client.vectorize, edge_client.upload, featurizer.runtime, contract\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'pyspark', 'py4j') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_packages_modules_import_each_other_without_a_circle():
    """Every import between the project's own modules (at the top or inside a function) goes one way: a module never
    reaches itself again (cloud_pca had pca -> spark -> scan -> trust -> spark). Storage, the Spark session, the
    trust rules and the state each have a module of their own."""
    import ast

    root = Path(__file__).resolve().parent.parent
    packages = ("contract", "cloud_pca", "edge_client", "featurizer", "models", "web", "demo", "bootstrap")
    graph = {}
    for pkg in packages:
        for path in sorted((root / pkg).glob("*.py")):
            name = f"{pkg}.{path.stem}" if path.stem != "__init__" else pkg
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    if node.module.split(".")[0] in packages:
                        deps.add(node.module)
                        deps.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.split(".")[0] in packages)
            graph[name] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}

    def circle(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = [c for c in map(circle, sorted(graph)) if c]
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_s3_round_trip_boto3_spark_pyarrow(spark, s3, bucket, s3_server):
    table = pa.table({"image_id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.put_object(Bucket=bucket, Key="in/data.parquet", Body=buf.getvalue())

    df = spark.read.parquet(f"s3a://{bucket}/in/")
    assert sorted(r["image_id"] for r in df.collect()) == ["a", "b", "c"]
    df.withColumn("y", df.x * 2).coalesce(1).write.mode("overwrite").parquet(f"s3a://{bucket}/out/")

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    parts = [k for k in keys if k.endswith(".parquet")]
    assert len(parts) == 1 and "out/_SUCCESS" in keys
    # pyarrow reads it back through its own S3 filesystem, against the same local server.
    from pyarrow import fs

    host = s3_server.endpoint_url.split("://")[1]
    s3fs = fs.S3FileSystem(endpoint_override=host, scheme="http", access_key="testing", secret_key="testing",
                           region="us-east-1")
    back = pq.read_table(f"{bucket}/{parts[0]}", filesystem=s3fs).sort_by("image_id")
    assert back.column("y").to_pylist() == [2.0, 4.0, 6.0]


def test_synthetic_photos_are_deterministic_and_fruits360_shaped(tmp_path):
    from PIL import Image

    from models.synthetic import class_names, generate

    a = generate(tmp_path / "a", per_class=3, n_classes=4, seed=5)
    b = generate(tmp_path / "b", per_class=3, n_classes=4, seed=5)
    c = generate(tmp_path / "c", per_class=3, n_classes=4, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert [f.parent.name for f in files[::3]] == sorted(class_names(4))
    assert all(re.fullmatch(r"\d+_100\.jpg", f.name) for f in files)
    digest = lambda root: [hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files]  # noqa: E731
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    img = Image.open(a / files[0])
    assert img.size == (100, 100) and img.format == "JPEG"
    arr = np.asarray(img)
    assert (arr[0, 0] > 200).all(), "the background is white"


@pytest.mark.slow
def test_the_driver_maps_its_classes_from_the_archive_setup_wrote(tmp_path, monkeypatch):
    """``./run setup`` archives the Spark driver's classes (AppCDS): a session from plain Python maps them (with
    ``-Xshare:on`` the JVM refuses to start when it cannot), and loads most classes from the archive, not the jars.
    Without an archive (another cache folder) no option is given, and sessions start as before."""
    from cloud_pca import classarchive

    path = classarchive.build(quiet=True)
    assert path is not None and path.is_file(), "./run setup writes the archive (python -m cloud_pca.classarchive)"
    options = classarchive.java_options()
    assert f"-XX:SharedArchiveFile={path}" in options
    log = tmp_path / "classes.txt"
    code = ("import sys; from cloud_pca.spark import get_spark\n"
            "s = get_spark('fruits-cds', master='local[1]', conf={'spark.driver.extraJavaOptions': sys.argv[1]})\n"
            "s.range(10).count(); s.stop()")
    done = subprocess.run([sys.executable, "-c", code, f"-Xshare:on -Xlog:class+load=info:file={log}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = log.read_text().splitlines()
    shared = sum("shared objects file (top)" in line for line in lines)
    assert shared > 5000 and shared > 5 * sum("source: jar:" in line or "source: file:" in line for line in lines)
    monkeypatch.setenv("FRUITS_CACHE", str(tmp_path / "empty"))
    assert classarchive.java_options() == ""
