"""Latency histograms: the percentiles of known histograms, exactly."""
import numpy as np
import pytest

from harness import readout
from hwmodel import hist


def bucket(v):
    """hist.bucket, in Python (the compiled one is the runs' own)."""
    if v < hist.SUB:
        return v
    shift = v.bit_length() - 1 - hist.SUB_BITS
    return shift * hist.SUB + (v >> shift)


def known():
    """100 values: 50 of 3 cycles, 40 of 100, 9 of 1000, 1 of 10000, as
    hist.record leaves them."""
    h = np.zeros(hist.WORDS, dtype=np.int64)
    for v, n in ((3, 50), (100, 40), (1000, 9), (10000, 1)):
        h[bucket(v)] += n
        h[hist.BUCKETS + hist.H_COUNT] += n
        h[hist.BUCKETS + hist.H_SUM] += n * v
    h[hist.BUCKETS + hist.H_MAX] = 10000
    return h


def test_buckets_hold_their_values():
    assert bucket(100) == 36 and hist.bucket_upper(36) == 103
    for v in list(range(300)) + [1000, 10000, 12345, 2 ** 40 + 5]:
        b = bucket(v)
        assert hist.bucket_upper(b) >= v and (b == 0 or hist.bucket_upper(b - 1) < v)
        # within 12.5% of the upper edge
        assert hist.bucket_upper(b) - v <= v / 8 + 1
    assert hist.totals(known()) == (100, 50 * 3 + 40 * 100 + 9 * 1000 + 10000, 10000)


def test_percentiles_of_a_known_histogram_exactly():
    h = known()
    b = hist.merged(h)
    assert hist.percentile(b, 0.5) == 3
    assert hist.percentile(b, 0.9) == 103
    assert hist.percentile(b, 0.99) == hist.bucket_upper(bucket(1000)) == 1023
    # the last bucket's edge (10239) is held to the exact maximum
    assert hist.percentile(b, 0.999) == hist.bucket_upper(bucket(10000)) == 10239
    assert hist.percentile(b, 0.999, top=10000) == 10000
    d = readout.distribution(h, 2.0)                 # 2 cycles per ns
    assert d == {"count": 100, "mean": pytest.approx(231.5 / 2), "p50": 1.5, "p90": 51.5,
                 "p99": 511.5, "p99_9": 5000.0, "max": 5000.0,
                 "buckets": [[1.5, 50], [51.5, 40], [511.5, 9], [5000.0, 1]]}


def test_distributions_sum_workers_and_take_off_a_constant():
    rows = np.stack([known(), known()])
    rows[1, hist.BUCKETS + hist.H_MAX] = 20000      # one worker's max is the max
    d = readout.distribution(rows, 1.0, offset=3)
    assert d["count"] == 200 and d["p50"] == 0.0 and d["p90"] == 100.0
    assert d["max"] == 19997.0
    assert readout.distribution(np.zeros(hist.WORDS, np.int64), 1.0) == {"count": 0}
