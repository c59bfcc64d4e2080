"""Statistics that decide: a median's confidence interval, and whether two
sets of windows differ.

Both are distribution-free, because a window's throughput is not normal:
a preemption or a lock convoy makes a long tail on one side.

- A median's interval is the order-statistics one: with n windows, the
  k-th smallest and the k-th largest bound the median with probability
  1 - 2 P(Bin(n, 1/2) < k), whatever the distribution.  Under 6 windows
  no k reaches 95%; the interval is then [min, max] and its `level` says
  what it does cover (75% for 3 windows).
- Two points whose windows span two launches or more on each side are
  compared launch by launch: the windows of one launch share its
  segment's pages and its workers, and two launches differ by more than
  two windows of one do, so the windows are not independent draws and a
  test on them calls a launch's luck a difference.  Each launch gives one
  value, the median of its windows, and Welch's t test on their logs
  decides; the ratio B/A gets the interval of the difference of the
  mean logs, which excludes 1 exactly when the test rejects.
- Points of one launch a side (older files, --launches 1) are compared by
  the Mann-Whitney U test on their windows, and the ratio B/A gets the
  Hodges-Lehmann interval that goes with it: the order statistics of
  every pairwise log(b / a), cut where U's exact null distribution puts
  alpha/2 on each side.  Again the interval excludes 1 exactly when the
  test rejects.  With 3 windows on each side the smallest two-sided p is
  0.10: no verdict at 5% is possible, and `compare` says so.
"""
import math

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


def median_ci(runs, level=LEVEL):
    """(low, high, level reached) of the median of `runs`."""
    x = np.sort(np.asarray(runs, dtype=float))
    n = len(x)
    if n == 0:
        return None, None, 0.0
    if n == 1:
        return float(x[0]), float(x[0]), 0.0
    # k from 1: the interval [x_(k), x_(n+1-k)] covers with 1 - 2 cdf(k - 1)
    best = 1
    for k in range(1, n // 2 + 1):
        if 1 - 2 * sps.binom.cdf(k - 1, n, 0.5) >= level:
            best = k
        else:
            break
    got = 1 - 2 * sps.binom.cdf(best - 1, n, 0.5)
    return float(x[best - 1]), float(x[n - best]), float(got)


def half_width(runs, level=LEVEL):
    """The interval's larger side over the median, or None with under 2
    windows: what --target-ci compares."""
    if len(runs) < 2:
        return None
    lo, hi, _ = median_ci(runs, level)
    med = float(np.median(runs))
    return max(med - lo, hi - med) / med if med else None


def point_ci(runs, level=LEVEL):
    """As a point of the results holds it."""
    lo, hi, got = median_ci(runs, level)
    return {"low": lo, "high": hi, "level": round(got, 4), "method": "order statistics"}


def _u_null(m, n):
    """P(U = u) for u in 0..m*n: the Mann-Whitney U's exact distribution
    without ties, by the recurrence f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u),
    counted in floats over the C(m+n, n) orderings."""
    # f[j] holds the counts for (i, j) as i grows
    f = [np.zeros(m * n + 1) for _ in range(n + 1)]
    for j in range(n + 1):
        f[j][0] = 1.0
    for i in range(1, m + 1):
        g = [np.zeros(m * n + 1) for _ in range(n + 1)]
        g[0][0] = 1.0
        for j in range(1, n + 1):
            g[j] = g[j - 1].copy()
            g[j][j:] += f[j][:len(f[j]) - j]
        f = g
    counts = f[n]
    return counts / counts.sum()


def launch_medians(runs, launch=None):
    """The median of each launch's windows, launches in order; `launch`
    (a launch index per window) None: the windows of one launch."""
    runs = np.asarray(runs, dtype=float)
    if launch is None or len(launch) != len(runs):
        return [float(np.median(runs))] if len(runs) else []
    launch = np.asarray(launch)
    return [float(np.median(runs[launch == k])) for k in sorted(set(launch.tolist()))]


def compare(a_runs, b_runs, a_launch=None, b_launch=None, alpha=1 - LEVEL):
    """B against A: {ratio (of the medians), low, high (the interval of
    B/A), level (what it covers), p (two-sided), verdict, unit ("launches"
    or "windows": what the test took as its draws), n (their count on each
    side)}.  `a_launch`, `b_launch`: each window's launch.  verdict:
    "faster", "slower", "no significant difference", or "too few windows"
    when no p under alpha is possible."""
    a = np.asarray(a_runs, dtype=float)
    b = np.asarray(b_runs, dtype=float)
    m, n = len(a), len(b)
    ratio = float(np.median(b) / np.median(a)) if m and n and np.median(a) else None
    la, lb = launch_medians(a, a_launch), launch_medians(b, b_launch)
    if len(la) >= 2 and len(lb) >= 2 and min(la + lb) > 0:
        return _welch(la, lb, ratio, alpha)
    out = {"ratio": ratio, "low": None, "high": None, "level": 0.0, "p": None,
           "verdict": "too few windows", "unit": "windows", "n": [m, n]}
    if m < 1 or n < 1 or (a <= 0).any() or (b <= 0).any():
        return out
    d = np.sort(np.log(b)[None, :] - np.log(a)[:, None], axis=None)
    cdf = np.cumsum(_u_null(m, n))
    # the interval [d_(k), d_(N+1-k)] covers with 1 - 2 P(U <= k - 1)
    k = 1
    while k < len(d) // 2 + 1 and 2 * cdf[k] <= alpha:
        k += 1
    out["level"] = float(1 - 2 * cdf[k - 1])
    out["low"], out["high"] = float(math.exp(d[k - 1])), float(math.exp(d[len(d) - k]))
    smallest_p = min(1.0, 2 * cdf[0])
    if m > 1 or n > 1:
        same = np.all(a == a[0]) and np.all(b == a[0])
        out["p"] = 1.0 if same else float(sps.mannwhitneyu(
            b, a, alternative="two-sided", method="exact" if m * n <= 2500 else "asymptotic").pvalue)
    if smallest_p > alpha:
        return out
    if out["p"] is not None and out["p"] <= alpha:
        out["verdict"] = "faster" if out["low"] > 1 else "slower" if out["high"] < 1 else \
            "faster" if ratio > 1 else "slower"
    else:
        out["verdict"] = "no significant difference"
    return out


def _welch(la, lb, ratio, alpha):
    """Welch's t test on the logs of the launches' medians, and the
    interval of B/A it implies (exp of the difference of mean logs)."""
    x, y = np.log(la), np.log(lb)
    out = {"ratio": ratio, "level": float(1 - alpha), "unit": "launches", "n": [len(x), len(y)]}
    d = float(y.mean() - x.mean())
    if x.var() == 0 and y.var() == 0:
        # every launch alike on both sides: no spread to test against
        out.update(low=math.exp(d), high=math.exp(d), p=1.0 if d == 0 else 0.0)
    else:
        res = sps.ttest_ind(y, x, equal_var=False)
        ci = res.confidence_interval(1 - alpha)
        out.update(low=math.exp(float(ci.low)), high=math.exp(float(ci.high)),
                   p=float(res.pvalue))
    out["verdict"] = ("no significant difference" if out["p"] > alpha
                      else "faster" if d > 0 else "slower")
    return out


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None
