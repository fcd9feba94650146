"""The PCA job's structure, pinned (issue 26): how many times a run reads the features, measured from the bytes the
local S3 server actually served (a regression to extra passes fails here, not in a benchmark no one runs)."""
from __future__ import annotations

from collections import Counter
from urllib.parse import unquote, urlparse

import pytest

from vectors_for_tests import contract_rows, layout_key, put_rows

ROOT = "team"


@pytest.fixture
def served(monkeypatch):
    """Bytes of object content the local S3 server sent, per key (GETs, ranges included)."""
    from moto.s3.responses import S3Response

    counts: Counter = Counter()
    original = S3Response.key_response

    def counting(self, request, full_url, *a, **k):
        out = original(self, request, full_url, *a, **k)
        if request.method == "GET" and isinstance(out, tuple) and len(out) == 3 and out[0] in (200, 206):
            counts[unquote(urlparse(full_url).path).split("/", 2)[2]] += len(out[2] or b"")
        return out

    monkeypatch.setattr(S3Response, "key_response", counting)
    return counts


def upload(s3, bucket, batches) -> dict[str, int]:
    sizes = {}
    for start, n in batches:
        rows = contract_rows(n, start=start, seed=start)
        key = layout_key(ROOT, rows, client=f"phone-{start}")
        put_rows(s3, bucket, key, rows)
        sizes[key] = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    return sizes


def passes(served, sizes: dict[str, int]) -> float:
    """Times the inputs' bytes were read (footer reads of the driver's checks are a small fraction)."""
    return sum(served[k] for k in sizes) / sum(sizes.values())


@pytest.mark.slow
def test_a_run_reads_the_features_twice(spark, s3, bucket, served):
    """Pass 1 validates, counts, checks ids and sums the Gram statistics; pass 2 projects and writes. Before: the
    rows were read by Spark once, then cached and scanned five more times (counts, dedup, fit, project)."""
    from cloud_pca.job import JobConfig, run

    sizes = upload(s3, bucket, [(0, 300), (300, 300), (600, 300)])
    served.clear()
    s = run(spark, JobConfig(inputs=[f"s3a://{bucket}/{ROOT}/vectors/"], output=f"s3a://{bucket}/{ROOT}/pca", k=4,
                             run_id="a", plots=False)).summary
    assert s["projected"] == 900 and s["passes"] == {"features": 2, "path": "files read in Python tasks"}
    assert 1.95 <= passes(served, sizes) < 2.2, passes(served, sizes)


@pytest.mark.slow
def test_duplicates_cost_one_more_gram_pass(spark, s3, bucket, served):
    from cloud_pca.job import JobConfig, run

    sizes = upload(s3, bucket, [(0, 300), (200, 300)])          # 100 ids in both files
    served.clear()
    s = run(spark, JobConfig(inputs=[f"s3a://{bucket}/{ROOT}/vectors/"], output=f"s3a://{bucket}/{ROOT}/pca", k=4,
                             run_id="d", plots=False)).summary
    assert (s["projected"], s["duplicates"], s["passes"]["features"]) == (500, 100, 3)
    assert 2.95 <= passes(served, sizes) < 3.2, passes(served, sizes)


@pytest.mark.slow
@pytest.mark.parametrize("driver_batch_bytes", [128 * 2**20, 0])
def test_an_incremental_run_reads_only_the_new_object_twice(spark, s3, bucket, served, driver_batch_bytes):
    """Read by the driver (a batch of one task's size, the default) or by Spark tasks: the same passes."""
    from cloud_pca.job import JobConfig, run

    old = upload(s3, bucket, [(0, 400), (400, 400)])
    cfg = dict(inputs=[f"s3a://{bucket}/{ROOT}/vectors/"], output=f"s3a://{bucket}/{ROOT}/pca", k=4, plots=False,
               incremental=True, driver_batch_bytes=driver_batch_bytes)
    run(spark, JobConfig(run_id="i1", **cfg))
    new = upload(s3, bucket, [(800, 200)])
    served.clear()
    s = run(spark, JobConfig(run_id="i2", **cfg)).summary
    assert s["incremental"]["rows_added"] == 200 and s["passes"]["features"] == 2
    assert ("driver" in s["passes"]["path"]) == bool(driver_batch_bytes)
    assert passes(served, old) < 0.05, "the counted objects' features are not read again"
    assert 1.95 <= passes(served, new) < 2.3, passes(served, new)
