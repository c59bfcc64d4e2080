import os
import re

import pytest

SHM = "/dev/shm"


def our_segments():
    try:
        return sorted(n for n in os.listdir(SHM)
                      if re.match(r"iommu-stress-%d-" % os.getpid(), n))
    except OSError:
        return []


@pytest.fixture
def no_leaks():
    """Asserts that the test leaves no segment of this process behind."""
    before = our_segments()
    yield
    assert our_segments() == before
