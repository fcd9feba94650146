#!/usr/bin/env bash
# EMR bootstrap action for the Fruits! job (runs on every node, as hadoop, before Spark starts).
#
# EMR 7.x (Amazon Linux 2023) has Spark 3.5 and Python 3.9. The job is pinned and tested on Python 3.11
# (numpy 2.4 and pyarrow 26 need >= 3.11), so this installs AL2023's python3.11 package and the job's
# pinned libraries into it. Spark itself is not reinstalled: the cluster's spark-env configuration sets
# PYSPARK_PYTHON=/usr/bin/python3.11 (see bootstrap/emr.py), and EMR's own pyspark is used.
#
#   usage: emr-bootstrap.sh s3://BUCKET/PREFIX/bootstrap/requirements-emr.txt
set -euo pipefail

REQUIREMENTS_URI="${1:?usage: emr-bootstrap.sh s3://BUCKET/PREFIX/bootstrap/requirements-emr.txt}"
PYTHON_PACKAGE="python3.11"
PYTHON="${FRUITS_NODE_PYTHON:-/usr/bin/python3.11}"   # the nodes' interpreter (spark-env's PYSPARK_PYTHON)
PIP_VERSION="24.3.1"
REQUIREMENTS="$(mktemp)"
trap 'rm -f "$REQUIREMENTS"' EXIT

log() { printf '[fruits-bootstrap] %s\n' "$*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "installing $PYTHON_PACKAGE from the Amazon Linux repositories"
  sudo dnf install -y -q "$PYTHON_PACKAGE" "$PYTHON_PACKAGE-pip"
fi

log "fetching $REQUIREMENTS_URI"
aws s3 cp --only-show-errors "$REQUIREMENTS_URI" "$REQUIREMENTS"

log "installing pinned libraries into $PYTHON (no pyspark: EMR provides Spark)"
if grep -Eiq '^(pyspark|py4j)==' "$REQUIREMENTS"; then
  log "refusing: the requirements list pyspark or py4j, which would shadow EMR's Spark"; exit 1
fi
sudo "$PYTHON" -m pip install --quiet --no-cache-dir "pip==$PIP_VERSION"
sudo "$PYTHON" -m pip install --quiet --no-cache-dir --only-binary=:all: -r "$REQUIREMENTS"

"$PYTHON" -c 'import numpy, pandas, pyarrow, PIL, matplotlib, ai_edge_litert, pi_heif; print("[fruits-bootstrap] ok:", numpy.__version__, pandas.__version__, pyarrow.__version__)'
