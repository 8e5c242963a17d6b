"""The training process keeps freed memory in its heap (avfl.allocator): checked in fresh
interpreters, since the setting is process-wide and would outlive a test in this one."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from avfl.allocator import _libc

# Allocates and frees a 64 MiB block twice and prints the bytes glibc held in mmapped blocks
# while it was alive (mallinfo2().hblkhd) and the page faults of the second allocation.
PROBE = """
import ctypes, resource, sys
from avfl.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
faults = []
for _ in range(2):
    block = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    mapped = libc.mallinfo2().hblkhd
    libc.free(block)
print(mapped, faults[1])
"""


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(_libc() is None, reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    mapped, faults = _probe("default")
    # glibc's default: a 64 MiB block is its own mapping, unmapped on free and faulted in anew.
    assert mapped >= 64 << 20
    assert faults > 10_000  # 16,384 pages of 4 KiB
    mapped, faults = _probe("retain")
    assert mapped < 64 << 20  # from the heap (blocks mapped before the call stay mapped)
    assert faults < 100  # the second block reuses the first one's pages


def test_train_command_retains_freed_memory_and_saves_without_crc(monkeypatch):
    """`python -m avfl train` makes its process-wide settings (avfl/runtime.py) before the job
    starts (the entry point is the process)."""
    from torch.utils.serialization import config

    from avfl import cli

    calls = []
    monkeypatch.setattr("avfl.allocator.retain_freed_memory", lambda: calls.append(1) or True)
    crc = config.save.compute_crc32

    def stop(*args, **kwargs):
        assert calls, "the allocator was not set before the job ran"
        assert config.save.compute_crc32 is False, "checkpoints would compute a CRC-32"
        config.save.compute_crc32 = crc  # this test's process goes on
        raise SystemExit(0)

    monkeypatch.setattr("avfl.train.run_job", stop)
    job = SimpleNamespace(settings={"federated": {"device": "cpu"}}, gpu=False)
    monkeypatch.setattr("avfl.jobspec.JobSpec.from_json", lambda text: job)
    with pytest.raises(SystemExit):
        cli.main(["train", "--job", "{}"])
    assert calls == [1]
