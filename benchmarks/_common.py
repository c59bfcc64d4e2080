"""What the benchmark scripts share: a one-line error for bad input, and the
machine the figures were measured on."""
import argparse
import os
import platform
from importlib import metadata


class Failed(Exception):
    """A one-line reason to stop; the exit status rides along."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    # argparse prints its usage as well; bad input gets one line
    def error(self, message):
        raise Failed(message, 2)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def numba_version():
    # the children import numba from this interpreter's environment; its
    # metadata says which without paying for the import
    try:
        return metadata.version("numba")
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_line():
    return ("machine: %s, %d cores allowed, python %s, numba %s"
            % (cpu_model(), len(os.sched_getaffinity(0)), platform.python_version(),
               numba_version()))


def run(main):
    """main(), its Failed as one line on stderr and the exit status."""
    import sys
    prog = os.path.basename(sys.argv[0])
    try:
        return main()
    except Failed as e:
        print("%s: error: %s" % (prog, e), file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("\n%s: interrupted" % prog, file=sys.stderr)
        return 130
