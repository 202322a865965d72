"""The allocator setting (mae.utils.memory): freed buffers are reused instead of page-faulted in again."""

import os
import subprocess
import sys

import pytest

# a "step": allocate and touch a buffer of 20-25 MiB (a little larger each step, so that glibc's dynamic mmap
# threshold never catches up), then free it; print whether the setting is in effect and the minor page faults of
# steps 10-19
PROBE = """
import resource, torch
from mae.utils.memory import keep_freed_memory
on = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(20):
    if i == 10:
        start = faults()
    torch.ones((20 << 18) + i * (1 << 16)).sum()
print(int(on), faults() - start)
"""


def _probe(tuning: str) -> tuple[bool, int]:
    env = {**os.environ, "MAE_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    on, faults = out.stdout.split()
    return bool(int(on)), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    on, tuned = _probe("1")
    off, default = _probe("0")
    assert on and not off
    # glibc defaults: every buffer is mapped afresh (> 5 000 pages per step); tuned: the heap keeps the freed
    # memory, only the growth (64 pages per step) is new
    assert default > 10 * 4000, default
    assert tuned < 2000, tuned
