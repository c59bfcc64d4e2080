"""The run's shared-memory ABI: what the parent process and the compiled
loops of its workers agree on, in one place.

- Capacities: the most workers, the deepest in-flight ring, the most
  domains.  The option bounds of `config.py` are these constants, so that
  no setting can outgrow the arrays sized by them (compiled code does not
  check bounds: a ring indexed past its end writes into the next worker's).
- The run configuration: one record of named fields (CONFIG), written by
  `pack` between points, read by name in compiled code (`env.cfg[0].depth`).
- The control words: indices into one int64 array (`Env.ctl`) that the
  parent and every worker touch with atomics.  `check_words` proves that no
  two names share a word.
- The counter lines: one 128-byte record per worker (COUNTERS) and one of
  sampled step times (STEPS), each worker writing only its own, so that
  counting adds no sharing of its own.
- The rings: each worker's in-flight mappings, and the hand-off rings a
  mapping worker fills for the worker that unmaps for it.
"""
import numpy as np

from hwmodel.locks import CTL_ABORT

LINE = 16                     # int64 words per 128-byte line
LINE_BYTES = 8 * LINE

# ------------------------------------------------------------- capacities

MAX_WORKERS = 1024
MAX_DEPTH = 1024              # the deepest in-flight ring a workload may ask for
MAX_DOMAINS = 64
SIZE_TABLE = 1024             # request sizes: a table indexed by 10 random bits

# ------------------------------------------------------- run configuration

CONFIG = np.dtype([
    ("depth", np.int64),              # mappings outstanding before the oldest is unmapped
    ("check", np.int64),              # 1: claim pages in the ownership map
    ("limit", np.int64),              # passed to alloc: highest pfn, or a DMA mask (LIMIT_IS_MASK)
    ("translate", np.int64),          # 0: the allocator maps nothing (TRANSLATES = False)
    ("seed", np.int64),
    ("flush", np.int64),              # index in dma.FLUSH_NAMES
    ("ndomains", np.int64),
    ("device_cycles", np.int64),      # the device's time per I/O
    ("hypercall_cycles", np.int64),   # per map and per unmap (PVDMA)
    ("premapped", np.int64),          # 1: the driver maps a buffer pool once and recycles it
    ("consumers", np.int64),          # workers that only unmap (cross-CPU unmap)
    ("rogue", np.int64),              # 1: publish unmapped IOVAs for the rogue device
    ("fq_timeout_cycles", np.int64),  # the flush policy's timer (dma.TIMEOUT_MS)
    ("ncpus", np.int64),              # CPUs with a flush queue
    ("pages", np.int64),              # IOVA space per domain
    ("trim_cycles", np.int64),        # between two runs of the allocator's trim
    ("diag", np.int64),               # 1: time the steps of one I/O in DIAG_SAMPLE
    ("outlier_cycles", np.int64),     # a sampled map or unmap longer is left out
    ("warmup_cycles", np.int64),
    ("window_cycles", np.int64),
    ("phase_every", np.int64),        # I/Os between two looks at the clock and the phase
    ("dma_passes", np.int64),         # times the device touches every page of an I/O
    ("slot_pages", np.int64),         # physical pages between two ring slots' buffers
    ("lat_hist", np.int64),           # 1: --diag's sampled maps and unmaps go into their
                                      # latency histograms (0 only to measure their cost)
], align=True)


def pack(cfg, **fields):
    """Write the run configuration: every field of CONFIG, no other; a
    value outside what the arrays were sized for is a ValueError."""
    names = set(CONFIG.names)
    missing = names - set(fields)
    unknown = set(fields) - names
    if missing or unknown:
        raise ValueError("run configuration: missing %s, unknown %s"
                         % (sorted(missing) or "none", sorted(unknown) or "none"))
    if not 1 <= fields["depth"] <= MAX_DEPTH:
        raise ValueError("depth %d outside 1..%d" % (fields["depth"], MAX_DEPTH))
    if not 1 <= fields["ndomains"] <= MAX_DOMAINS:
        raise ValueError("ndomains %d outside 1..%d" % (fields["ndomains"], MAX_DOMAINS))
    if fields["phase_every"] & (fields["phase_every"] - 1) or fields["phase_every"] < 1:
        raise ValueError("phase_every %d is not a power of two" % fields["phase_every"])
    for name in CONFIG.names:
        cfg[0][name] = int(fields[name])


# ---------------------------------------------------------- control words

# CTL_ABORT = 0: every lock wait and every wait of a worker watches it
# (hwmodel/locks.py owns it, since the locks are below the harness).
CTL_PHASE = 1                # PH_*
CTL_ATTACHED = 2             # workers at the start line
CTL_DONE = 3                 # workers parked again after the point
CTL_NACTIVE = 4              # workers the point uses
CTL_GEN = 5                  # the futex word parked workers sleep on
CTL_CMD = 6                  # CMD_*
CTL_DESIGN = 7               # index of the point's design
CTL_ERR = 8                  # 1 once the ownership map found a problem
CTL_ERR_PAGE = 9
CTL_ERR_HOLDER = 10          # worker + 1 that held the page
CTL_ERR_CLAIMANT = 11        # worker + 1 that claimed it
CTL_ERR_KIND = 12            # ERR_*
CTL_PRODUCERS_LEFT = 13      # cross-CPU unmap: mapping workers still mapping
CTL_FINISHED = 14            # workers past their loop; the last one drains the queues
CTL_ROGUE_PROBES = 15
CTL_ROGUE_STALE = 16
CTL_ROGUE_READY = 17
CTL_T_MEASURE = 18           # cycle counter at which the warm-up ends and the window opens
CTL_T_STOP = 19              # ... and at which the window closes
CTL_WORDS = 32
# after them, a line per worker: what it has waited for contended locks so
# far, any lock of the run (hwmodel/locks.py C_WAITED; --diag leaves the
# waits out of the steps it times and counts them whole)
CTL_WAITED = CTL_WORDS

# phases of a point (CTL_PHASE)
PH_WAIT, PH_WARMUP, PH_MEASURE, PH_STOP = 0, 1, 2, 3
# commands to parked workers (CTL_CMD)
CMD_RUN, CMD_EXIT = 1, 2
# what the ownership map found (CTL_ERR_KIND)
ERR_DOUBLE_MAP, ERR_NOT_HELD, ERR_EARLY_REUSE = 1, 2, 3


def control_words():
    """{name: index} of every control word."""
    return {name: value for name, value in globals().items()
            if name.startswith("CTL_") and name not in ("CTL_WORDS", "CTL_WAITED")}


def check_words():
    """Problems with the control-word map: two names on one word, or a
    word outside the array.  [] when it is sound."""
    problems = []
    seen = {}
    for name, index in sorted(control_words().items(), key=lambda kv: kv[1]):
        if not 0 <= index < CTL_WORDS:
            problems.append("%s = %d is outside the %d control words" % (name, index, CTL_WORDS))
        if index in seen:
            problems.append("%s and %s share control word %d" % (seen[index], name, index))
        seen[index] = name
    return problems


# ----------------------------------------------------------- counter lines

def _line(fields):
    """A record of int64 fields padded to whole 128-byte lines."""
    n = len(fields)
    pad = -n % LINE
    return np.dtype(fields + ([("_pad", np.int64, (pad,))] if pad else []), align=True)


# One per worker (Env.cnt): written by its worker only.
COUNTERS = _line([
    ("ops", np.int64),                # I/Os completed over the whole point
    ("ops_start", np.int64),          # ... when the measurement window opened
    ("ops_end", np.int64),            # ... when it closed
    ("ops_live", np.int64),           # ... so far, for the per-second series
    ("fails", np.int64),              # allocations that found no room
    ("unmaps", np.int64),
    ("status", np.int64),             # STATUS_*
    ("core", np.int64),               # the core it is pinned to
    ("device_wait_cycles", np.int64),   # waiting for the device to finish an I/O
    ("handoff_wait_cycles", np.int64),  # a mapping worker waiting for room in its hand-off ring
    ("t_start", np.int64),            # cycle counter when it saw the window open ...
    ("t_end", np.int64),              # ... and close: its own window, exactly
    ("next_trim", np.int64),          # when it runs the allocator's trim next
    ("ticks", np.int64),              # looks at the clock and the phase (harness/loop.py)
])
STATUS_RAN, STATUS_ABORTED = 1, 2

DIAG_SAMPLE = 16              # with --diag, one I/O in this many is timed step by step
# A sampled map or unmap longer than this holds a preemption (or waits on a
# lock holder that was preempted): its steps are left out of the averages,
# where one such sample, standing for DIAG_SAMPLE I/Os, would count the
# preemption sixteen times over, and counted as an outlier; the time itself
# is the breakdown's `preempted` (and the lock table's wait).
SAMPLE_OUTLIER_NS = 100_000

# One per worker (Env.steps): cycles of the steps of the sampled I/Os.
STEPS = _line([
    ("maps", np.int64),               # sampled maps
    ("unmaps", np.int64),             # sampled unmaps
    ("alloc_cycles", np.int64),       # the allocator's alloc
    ("map_pte_cycles", np.int64),     # page-table writes
    ("unmap_pte_cycles", np.int64),   # page-table clears
    ("free_cycles", np.int64),        # the free, or the queueing of a deferred one,
                                      # less the invalidations waited for in it
                                      # (every step here, the flush and the service
                                      # leave out the contended lock waits, which the
                                      # breakdown counts whole from CTL_WAITED)
    ("hypercall_cycles", np.int64),   # PVDMA: the hypercalls of a map and an unmap
    ("access_cycles", np.int64),      # the device's translations through the IOTLB
    ("service_cycles", np.int64),     # expired flush timers and the trim, less their
                                      # invalidations: every tick of the loop is timed,
                                      # not one in DIAG_SAMPLE
    ("flush_cycles", np.int64),       # an unmap's flush of a full queue and the
                                      # deferred frees it releases, less their
                                      # invalidations: every one timed, not sampled
    ("flush_inv", np.int64),          # scratch: the invalidation wait when one began,
    ("flush_waited", np.int64),       # and the lock waits
    ("outliers", np.int64),           # sampled maps and unmaps left out (SAMPLE_OUTLIER_NS)
    ("outlier_cycles", np.int64),     # their time
    ("inv_submit_cycles", np.int64),  # strict: submitting an invalidation and polling
                                      # for it, beyond the wait the unit's model sets
    ("ios", np.int64),                # sampled I/Os of the local ring timed whole, from
    ("io_cycles", np.int64),          # before the map to after the unmap, less a full
                                      # queue's flush, invalidation and device waits
    ("io_outliers", np.int64),        # scratch: `outliers` when the timed I/O began
    ("io_waits", np.int64),           # scratch: those waits (and lock waits) when it began
    ("ticks_timed", np.int64),        # ticks timed, one in DIAG_SAMPLE,
    ("tick_cycles", np.int64),        # and their cycles, less their service
    ("map_cycles", np.int64),         # the sampled maps whole, first stamp to last,
    ("map_sq", np.int64),             # and the sum of their squares (dmabench's
                                      # standard deviation, as map_benchmark.c keeps one)
    ("unmaps_whole", np.int64),       # the sampled unmaps whole, waits and a full
    ("unmap_cycles", np.int64),       # queue's flush included, those of them not over
    ("unmap_sq", np.int64),           # SAMPLE_OUTLIER_NS: their count, sum and squares
    ("clean_ios", np.int64),          # I/Os between two ticks none of which was sampled
    ("clean_cycles", np.int64),       # (harness/loop.py `_between_ticks`), and their
                                      # cycles less the waits counted elsewhere
    ("stall_ios", np.int64),          # I/Os between two ticks that took, less those waits,
    ("stall_cycles", np.int64),       # over SAMPLE_OUTLIER_NS, and their cycles
    ("dirty_ios", np.int64),          # the other I/Os between two ticks (some sampled, or
    ("dirty_cycles", np.int64),       # after a timed tick or the service), and their cycles
    ("tick_prev", np.int64),          # scratch: the last tick's read of the clock,
    ("tick_ops", np.int64),           # the I/O count then,
    ("tick_waits", np.int64),         # the waits counted elsewhere then,
    ("tick_dirty", np.int64),         # and 1 once an I/O since was sampled
])

# --diag's window edges (Env.edges): per worker, two records of the counts
# the breakdown reads, as the worker saw its window open and then close
# (harness/loop.py `_edge`), so that the breakdown holds the window, as the
# throughput does, not the warm-up or the drain: its steps record word for
# word, then the counts kept elsewhere.
EDGE_STEPS = STEPS.itemsize // 8
E_WAITED = EDGE_STEPS             # contended lock waits (CTL_WAITED)
E_INV_WAIT = EDGE_STEPS + 1       # hwmodel/iommu.py S_INV_WAIT, S_INV_QUEUE
E_INV_QUEUE = EDGE_STEPS + 2
E_DEVICE_WAIT = EDGE_STEPS + 3    # COUNTERS' device_wait_cycles, handoff_wait_cycles,
E_HANDOFF_WAIT = EDGE_STEPS + 4   # ticks and unmaps
E_TICKS = EDGE_STEPS + 5
E_UNMAPS = EDGE_STEPS + 6
EDGE_WORDS = -(-(EDGE_STEPS + 7) // LINE) * LINE


# ------------------------------------------------------------------- rings

# an in-flight mapping: a worker's ring (Env.ring), and a hand-off ring
RING_IOVA, RING_PAGES, RING_T_DONE, RING_DOMAIN = range(4)
RING_WORDS = 4
RING_STRIDE = MAX_DEPTH * RING_WORDS          # words of one worker's ring
# a hand-off ring (Env.hand): the entries, then the consumer's head and the
# producer's tail, each on its own line
HAND_HEAD = RING_STRIDE
HAND_TAIL = RING_STRIDE + LINE
HAND_STRIDE = RING_STRIDE + 2 * LINE


def layout(nworkers):
    """The harness's own arrays of a run of `nworkers` workers."""
    return [("ctl", np.int64, (CTL_WAITED + nworkers * LINE,)),
            ("cfg", CONFIG, (1,)),
            ("cnt", COUNTERS, (nworkers,)),
            ("steps", STEPS, (nworkers,)),
            ("ring", np.int64, (nworkers * RING_STRIDE,)),
            ("hand", np.int64, (nworkers * HAND_STRIDE,)),
            ("sizes", np.int64, (SIZE_TABLE,)),
            ("bell", np.int64, (nworkers * LINE,)),
            ("edges", np.int64, (nworkers * 2 * EDGE_WORDS,))]


_problems = check_words()
if _problems:
    raise ImportError("harness.abi: %s" % "; ".join(_problems))
