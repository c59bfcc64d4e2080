"""map and unmap, as the DMA API does them: allocate an IOVA, write its
page-table entries; clear them, free the IOVA.

With `--check` every page is also claimed in an ownership map with a
compare-and-swap from 0 to the claimant's id and released on unmap: a failed
claim is a double mapping, which the allocators must never produce.  The
first one found is recorded in the control words and stops the run.
"""
from collections import namedtuple


from hwmodel.cpu import cas, hot, store
from hwmodel.locks import CTL_ABORT

LINE = 16
PTE_PRESENT = 1              # bit 0 of an I/O page-table entry
PTE_WRITE = 2
PAGE_SHIFT = 12

# Control words (Env.ctl), shared by the parent and every worker.
CTL_PHASE = 1
CTL_ATTACHED = 2
CTL_DONE = 3
CTL_NACTIVE = 4
CTL_GEN = 5                  # bumped to wake parked workers (futex word)
CTL_CMD = 6
CTL_DESIGN = 7
CTL_ERR = 8                  # 1 once a double mapping was found
CTL_ERR_PAGE = 9
CTL_ERR_HOLDER = 10          # worker + 1 that held the page
CTL_ERR_CLAIMANT = 11        # worker + 1 that claimed it again
CTL_ERR_KIND = 12            # 1 double map, 2 release of a page not held
CTL_WORDS = 32

# Env.cfg words: the point's parameters, read by every worker.
CFG_DEPTH = 0                # mappings outstanding before the oldest is unmapped
CFG_CHECK = 1
CFG_LIMIT = 2                # the limit passed to alloc (pfn, or index for bitmaps)
CFG_TRANSLATE = 3            # 0 for the direct design
CFG_SEED = 4
CFG_PT_PAGES = 5
CFG_WORDS = 16

RINGCAP = 1024               # the deepest in-flight ring a workload may ask for
SIZE_TABLE = 1024            # request sizes: a table indexed by 10 random bits

Env = namedtuple("Env", ["ctl", "cfg", "pt", "own", "cnt", "ring", "sizes"])


def layout(nworkers, pt_pages):
    return [("ctl", "int64", (CTL_WORDS,)),
            ("cfg", "int64", (CFG_WORDS,)),
            ("pt", "int64", (pt_pages,)),
            ("own", "int64", (pt_pages,)),
            ("cnt", "int64", (nworkers * LINE,)),
            ("ring", "int64", (nworkers * RINGCAP * 2,)),
            ("sizes", "int64", (SIZE_TABLE,))]


def make(views):
    return Env(*(views[name] for name in Env._fields))


@hot
def _report(env, kind, page, holder, claimant):
    if cas(env.ctl, CTL_ERR, 0, 1) == 0:
        env.ctl[CTL_ERR_KIND] = kind
        env.ctl[CTL_ERR_PAGE] = page
        env.ctl[CTL_ERR_HOLDER] = holder
        env.ctl[CTL_ERR_CLAIMANT] = claimant
        store(env.ctl, CTL_ABORT, 1)


@hot
def _claim(env, w, iova, pages):
    for i in range(pages):
        old = cas(env.own, iova + i, 0, w + 1)
        if old != 0:
            _report(env, 1, iova + i, old, w + 1)


@hot
def _release(env, w, iova, pages):
    for i in range(pages):
        old = cas(env.own, iova + i, w + 1, 0)
        if old != w + 1:
            _report(env, 2, iova + i, old, w + 1)


@hot
def dma_map(alloc, st, env, w, cpu, pages, phys):
    """The bus address of `pages` pages at physical page `phys`, or -1 when
    the allocator has no room."""
    if env.cfg[CFG_TRANSLATE] == 0:
        return phys
    iova = alloc(st, w, cpu, pages, env.cfg[CFG_LIMIT])
    if iova < 0:
        return -1
    if env.cfg[CFG_CHECK] != 0:
        _claim(env, w, iova, pages)
    pt = env.pt
    for i in range(pages):
        pt[iova + i] = ((phys + i) << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITE
    return iova


@hot
def dma_unmap(free, st, env, w, cpu, iova, pages):
    if env.cfg[CFG_TRANSLATE] == 0:
        return
    pt = env.pt
    for i in range(pages):
        pt[iova + i] = 0
    if env.cfg[CFG_CHECK] != 0:
        _release(env, w, iova, pages)
    free(st, w, cpu, iova, pages)
