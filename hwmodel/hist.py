"""Log-linear histograms of cycle counts, in int64 words a worker owns.

Powers of two split in SUB buckets each (HdrHistogram's scheme at three
significant bits): a value is within 12.5% of its bucket's upper edge,
from one cycle to 2^63, in BUCKETS words and a line of totals.  Recording
one is a count-leading-zeros, a shift and four adds to words of the
recording worker's own, no clock read: it is what the exposure window of
an unmap, the sampled maps and unmaps of --diag and the timed lock waits
and holds all use.
"""
import numpy as np

from hwmodel.cpu import clz, cycles, hot

LINE = 16                     # int64 words per 128-byte line
SUB_BITS = 3
SUB = 1 << SUB_BITS
BUCKETS = 64 * SUB
WORDS = BUCKETS + LINE        # the buckets, then a line of totals
H_COUNT, H_SUM, H_MAX = 0, 1, 2


@hot(inline="always")
def bucket(c):
    """The bucket of value c (cycles, >= 0)."""
    if c < SUB:
        return c
    shift = 63 - clz(np.uint64(c)) - SUB_BITS
    return shift * SUB + (c >> shift)


@hot(inline="always")
def record(h, base, c):
    """Value c into the histogram at h[base:base + WORDS]."""
    if c < 0:
        c = 0
    h[base + bucket(c)] += 1
    t = base + BUCKETS
    h[t + H_COUNT] += 1
    h[t + H_SUM] += c
    if c > h[t + H_MAX]:
        h[t + H_MAX] = c


def bucket_upper(b):
    """The largest value (cycles) histogram bucket b holds."""
    if b < SUB:
        return b
    shift = b // SUB - 1
    q = b % SUB + SUB
    return ((q + 1) << shift) - 1


def percentile(hist, q, top=None):
    """The q-th quantile (0 < q <= 1) of a histogram's buckets: the upper
    edge of the bucket holding it, no more than `top` (the exact maximum,
    where known).  0 for an empty histogram."""
    hist = np.asarray(hist)
    total = hist.sum()
    if total == 0:
        return 0
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    v = bucket_upper(min(idx, len(hist) - 1))
    return v if top is None else min(v, top)


def totals(h):
    """(count, sum, max) of one histogram's WORDS, or of several summed
    (a 2-D array, one histogram a row: the max is the rows' max)."""
    h = np.asarray(h).reshape(-1, WORDS)
    t = h[:, BUCKETS:]
    return int(t[:, H_COUNT].sum()), int(t[:, H_SUM].sum()), int(t[:, H_MAX].max())


def merged(h):
    """The buckets of one histogram, or of several summed."""
    return np.asarray(h).reshape(-1, WORDS)[:, :BUCKETS].sum(axis=0)


@hot
def _record_loop(h, vals, n, copies):
    t0 = cycles()
    for i in range(n):
        record(h, (i % copies) * WORDS, vals[i & (len(vals) - 1)])
    return cycles() - t0


# Histograms the calibration cycles through: 256 KiB of them, more than a
# level-1 data cache holds, so that a record finds its lines where a
# worker's does between two sampled I/Os (whose own work evicts them from
# level 1), not where a loop of records alone would keep them.
COST_COPIES = 64


def record_cost(n=1 << 16):
    """Cycles one `record` takes, measured on this machine: values spread
    over six powers of two (as latencies are), each into the next of
    COST_COPIES histograms; the best of three passes."""
    rng = np.random.default_rng(1)
    vals = (2.0 ** rng.uniform(6, 12, 1024)).astype(np.int64)
    h = np.zeros(COST_COPIES * WORDS, dtype=np.int64)
    _record_loop(h, vals, 16, COST_COPIES)
    return min(_record_loop(h, vals, n, COST_COPIES) for _ in range(3)) / n
