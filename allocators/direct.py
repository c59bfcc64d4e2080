"""IOMMU off: the bus address is the physical address.  Nothing is allocated
and nothing is locked; the design every other one is a ratio of."""
from collections import namedtuple

import numpy as np

from allocators import STAT_LINE
from hwmodel.cpu import hot

NAME = "direct"
LOCK_CLASSES = ("none",)
STATS = ()
TRANSLATES = False           # the DMA layer uses the physical address as is

State = namedtuple("State", ["stats", "lk"])


def layout(p):
    return [("stats", np.int64, (p.nworkers * STAT_LINE,))]


def locks(p):
    return [0]


def make(views, lk):
    return State(views["stats"], lk)


def init(st, p):
    st.stats[:] = 0


@hot
def alloc(st, w, cpu, pages, limit):
    return 0


@hot
def free(st, w, cpu, pfn, pages):
    pass


def check(st, p, live):
    return []


def footprint(st, p):
    return {"start": 0, "peak": 0}

