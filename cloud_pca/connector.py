"""Spark's S3 connector: hadoop-aws matching the Hadoop inside the pinned pyspark, plus its AWS SDK.

The pyspark wheel has no S3 filesystem.  The jars come from Maven Central through ``mvn
dependency:copy`` into ``.cache/jars`` (ignored by git), once.  On EMR they are already on the classpath
and this module is not used.

    python -m cloud_pca.connector      # fetch if missing, print the jar paths
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from contract.errors import FruitsError, fetch_cli

# pyspark 3.5.x bundles Hadoop 3.3.4; hadoop-aws 3.3.4 was built against this SDK v1 bundle.
HADOOP_VERSION = "3.3.4"
ARTIFACTS = (
    ("org.apache.hadoop", "hadoop-aws", HADOOP_VERSION),
    ("com.amazonaws", "aws-java-sdk-bundle", "1.12.262"),
)


class ConnectorError(FruitsError, RuntimeError):
    """The S3 connector jars are missing or do not match the installed pyspark; says what to do."""


def jars_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache"
    return Path(os.environ.get("FRUITS_CACHE", default)) / "jars"


def bundled_hadoop_version() -> str | None:
    """The Hadoop version inside the installed pyspark (from its hadoop-client jar name)."""
    try:
        import pyspark
    except ImportError:
        return None
    jars = Path(pyspark.__file__).parent / "jars"
    for jar in jars.glob("hadoop-client-api-*.jar"):
        return jar.name[len("hadoop-client-api-"):-len(".jar")]
    return None


def connector_jars(*, fetch: bool = True, quiet: bool = True) -> list[Path]:
    """Paths of the connector jars, fetched with Maven on first use."""
    bundled = bundled_hadoop_version()
    if bundled and bundled != HADOOP_VERSION:
        raise ConnectorError(f"pyspark bundles Hadoop {bundled} but the connector is pinned to {HADOOP_VERSION}: "
                           f"update HADOOP_VERSION and the SDK in {__file__}")
    folder = jars_dir()
    paths = [folder / f"{a}-{v}.jar" for _, a, v in ARTIFACTS]
    missing = [(g, a, v) for (g, a, v), p in zip(ARTIFACTS, paths) if not p.is_file()]
    if missing and fetch:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ConnectorError("Maven (mvn) is needed once to fetch the S3 connector jars from Maven Central")
        folder.mkdir(parents=True, exist_ok=True)
        for g, a, v in missing:
            if not quiet:
                print(f"fetching {g}:{a}:{v} from Maven Central", file=sys.stderr)
            cmd = [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={g}:{a}:{v}", f"-DoutputDirectory={folder}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
            if proc.returncode != 0:
                raise ConnectorError(f"mvn could not fetch {g}:{a}:{v}: {(proc.stdout + proc.stderr)[-800:]}")
    still = [p for p in paths if not p.is_file()]
    if still:
        raise ConnectorError(f"S3 connector jars missing: {', '.join(map(str, still))} (run ./run setup)")
    return paths


def main(argv: list[str] | None = None) -> int:
    return fetch_cli(__doc__.split("\n\n")[0], connector_jars, argv)


if __name__ == "__main__":
    sys.exit(main())
