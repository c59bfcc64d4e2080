"""The "long-lasting ring interplay" of Malka et al. (FAST 2015), replayed:
the allocator's cost per request when a NIC's receive ring (long-lived
ranges, re-posted one buffer at a time) and its transmit buffers (mapped
and unmapped between) share one domain.

    python benchmarks/ring_interplay.py [--ring 512] [--rounds 20000]
                                        [--allocators rbtree,eiovar,magazines]

Each round maps and unmaps one transmit page, then frees the oldest receive
buffer and maps a new one.  In mainline's tree, the receive free lies above
`cached32_node` and moves it to the free's successor, the ring's re-post
fills the hole and becomes the cached node, and the next transmit
allocation walks down through the whole ring to the first gap below it:
one walk of `ring` nodes per round.  EiovaR (and the magazines) serve both
from their caches and never walk.  The workloads of the sweeps map a ring
in order (the oldest unmapped first), where this never happens, so this is
the place to see what the paper measured.
"""
import sys

from tabulate import tabulate

from _common import Failed, Parser, machine_line


def trace_text(ring, rounds):
    lines = ["a rx%d 1" % i for i in range(ring)]
    for k in range(rounds):
        i = k % ring
        lines += ["a tx 1", "f tx", "f rx%d" % i, "a rx%d 1" % i]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ring", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--allocators", default="rbtree,eiovar,magazines")
    args = ap.parse_args(argv)
    if args.ring < 1 or args.rounds < 1:
        raise Failed("--ring and --rounds must be positive", 2)
    from allocators import rbtree
    from harness import replay, trace
    t = trace.parse(trace_text(args.ring, args.rounds), "ring-interplay")
    rows = []
    for name in args.allocators.split(","):
        try:
            r = replay.run(t, name)
        except Exception as e:     # an unknown name, a refused size
            raise Failed("%s: %s" % (name, e)) from None
        if r.problems:
            raise Failed("%s: %s" % (name, r.problems[0]))
        tree = getattr(r.state, "tree", r.state)
        walked = "-"
        if hasattr(tree, "nodes"):
            s = tree.stats.reshape(-1, 16)
            allocs = int(s[:, rbtree.S_ALLOCS].sum())
            walked = "%.1f" % (int(s[:, rbtree.S_VISITED].sum()) / max(1, allocs))
            walked += " (%d tree allocs)" % allocs
        rows.append([name, "%.1f" % (r.elapsed_ns / len(t)), walked])
    print(machine_line())
    print("ring of %d, %d rounds: %d requests" % (args.ring, args.rounds, len(t)))
    print(tabulate(rows, headers=["allocator", "ns/request", "tree nodes walked per tree alloc"],
                   disable_numparse=True))


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print("ring_interplay: %s" % e, file=sys.stderr)
        sys.exit(e.status)
