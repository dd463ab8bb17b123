"""Freed memory stays in the process (`layert2v.allocator`): a fresh interpreter frees a large tensor and reports
how much of it left its resident set, with the package's setting and with glibc's defaults."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

RELEASED = """
import os, torch
import layert2v

def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

x = torch.ones(28 << 18)  # 28 MiB, filled: resident
before = resident()
del x
print((before - resident()) >> 20)
"""


def released_mib(**env: str) -> int:
    """MiB of a freed 28 MiB tensor handed back to the kernel, in a fresh interpreter."""
    run = subprocess.run(
        [sys.executable, "-c", RELEASED], env=os.environ | env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(run.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_freed_large_tensor_stays_in_the_process_for_the_next_one() -> None:
    assert released_mib(LAYERT2V_MALLOC="system") >= 27  # glibc's default: unmapped, faulted in again when reused
    assert released_mib() == 0
