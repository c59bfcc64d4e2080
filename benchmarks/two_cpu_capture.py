"""Write a captured-looking tracefs `trace` file: one NVMe-like device
mapping on two CPUs (submissions on CPUs 2 and 5), its completions unmapped
on the submitting CPU or, one in three, on the other (the interrupt's
CPU), with the `dma:dma_map_page`/`dma_unmap_page` events of Linux 6.12.

It is written, not captured: the addresses are those of a simple stand-in
(per-CPU last-in-first-out reuse of a freed size, else the next
size-aligned range down from 4 GiB), not of any kernel's allocator, so a
replay's comparison with them means nothing.  What it is for: the
import's and the concurrent replay's exercise on a trace of realistic
shape (`iommu-stress trace import` then `replay --concurrent`).

    python benchmarks/two_cpu_capture.py -o capture.txt [--ios 2000] [--seed 1]
"""
import random
import sys

from _common import Failed, Parser

HEADER = """# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:8
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""
DEVICE = "0000:01:00.0"
CPUS = (2, 5)
TOP = 1 << 32                    # dma-iommu tries below 4 GiB first for a PCI device
PAGE = 4096
# an NVMe queue's I/O sizes: mostly 4 KiB, some 8 to 128 KiB
SIZES = ((1, 0.70), (2, 0.10), (8, 0.10), (32, 0.10))
DEPTH = 32                       # I/Os in flight per CPU at most


def _size(rng):
    x = rng.random()
    for pages, w in SIZES:
        if x < w:
            return pages
        x -= w
    return SIZES[-1][0]


def generate(ios, seed):
    rng = random.Random(seed)
    cache = {c: {} for c in CPUS}      # per CPU: pages -> freed addresses
    bump = TOP
    outstanding = {c: [] for c in CPUS}
    lines = []
    t = 1200.000000
    done = 0
    phys = 0x140000000
    while done < ios or any(outstanding.values()):
        cpu = rng.choice(CPUS)
        t += rng.uniform(0.5e-6, 4e-6)
        submit = done < ios and len(outstanding[cpu]) < DEPTH and \
            (not outstanding[cpu] or rng.random() < 0.55)
        if submit:
            pages = _size(rng)
            free = cache[cpu].get(pages)
            if free:
                addr = free.pop()
            else:
                # size-aligned, top down, as iova.c places a range
                bump = (bump - pages * PAGE) & ~(pages * PAGE - 1)
                addr = bump
            phys += 0x10000
            d = rng.choice(("TO_DEVICE", "FROM_DEVICE"))
            outstanding[cpu].append((addr, pages, d))
            lines.append("             fio-%d    [%03d] ..... %12.6f: dma_map_page: %s dir=%s "
                         "dma_addr=%x size=%d phys_addr=%x attrs="
                         % (4100 + cpu, cpu, t, DEVICE, d, addr, pages * PAGE, phys))
            done += 1
            continue
        # a completion: the oldest I/O of some CPU, unmapped on its CPU or,
        # one in three, on the other one (the interrupt's)
        owner = cpu if outstanding[cpu] else next(c for c in CPUS if outstanding[c])
        addr, pages, d = outstanding[owner].pop(0)
        on = owner if rng.random() < 2 / 3 else next(c for c in CPUS if c != owner)
        cache[on].setdefault(pages, []).append(addr)
        lines.append("          <idle>-0       [%03d] d.h1. %12.6f: dma_unmap_page: %s dir=%s "
                     "dma_addr=%x size=%d attrs=" % (on, t, DEVICE, d, addr, pages * PAGE))
    return HEADER.format(n=len(lines)) + "\n".join(lines) + "\n"


def main(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ios", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    try:
        a = p.parse_args(argv)
        if not 1 <= a.ios <= 10 ** 7:
            raise Failed("--ios: %d out of range 1..10000000" % a.ios, 2)
        with open(a.output, "w") as f:
            f.write(generate(a.ios, a.seed))
    except Failed as e:
        print("two_cpu_capture: %s" % e, file=sys.stderr)
        return e.status
    except OSError as e:
        print("two_cpu_capture: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
