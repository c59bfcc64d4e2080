"""Composes designs, runs workers, measures and reports.

The modules of this floor that hold compiled code are added to the key of
numba's cache (see hwmodel), after the allocators'.
"""
from pathlib import Path

import allocators  # noqa: F401  (its sources enter the cache key first)
from hwmodel import compiled_sources

COMPILED = ("compose.py", "dma.py", "loop.py", "entries.py", "replay.py", "replayloop.py",
            "rogue.py")

compiled_sources(Path(__file__).resolve().parent / name for name in COMPILED)
