"""Shared benchmark helpers: timing, CSV/JSON rows."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Callable


def timed(label: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class Recorder:
    """Collects one dict per measurement; writes CSV and JSON next to each other."""

    def __init__(self, name: str, out_dir: str | Path = "out/benchmarks"):
        self.name = name
        self.out_dir = Path(out_dir)
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        self.rows.append(row)

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "measure", k))
        path = self.out_dir / f"{self.name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        (self.out_dir / f"{self.name}.json").write_text(json.dumps(self.rows, indent=1))
        return path
