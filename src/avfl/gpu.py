"""The GPUs of this machine, and GPU slots for concurrent jobs.

Snakemake's `--resources gpu=N` limits how many GPU jobs run at once but does not say which
GPU each one gets. On a GPU box every GPU job therefore takes a slot before CUDA starts: an
exclusive `flock` on one lock file per (GPU, slot), then restricts itself to that GPU by
setting CUDA_VISIBLE_DEVICES. The kernel drops a lock when its process ends, however it
ends, so a killed job never leaves a GPU taken.

- Lock files are keyed by the GPU's UUID (from NVML or nvidia-smi, never from CUDA, which
  must not start before the slot is chosen) and live in a node-local directory, `/tmp`
  unless `AVFL_GPU_LOCK_DIR` says otherwise. Under the working directory, on a cluster's
  shared filesystem, two nodes' "GPU 0" would block each other; a lock directory on a
  shared filesystem is refused.
- A job that a scheduler has already given exactly one GPU (SLURM: `SLURM_JOB_GPUS` or
  `SLURM_STEP_GPUS` set and one device visible) takes no lock: the GPU is its own. With
  cgroup-constrained GPUs every such job sees `CUDA_VISIBLE_DEVICES=0`, and a lock on "0"
  would run them one after another.
- `AVFL_GPU_JOBS_PER_DEVICE` (the config's `gpu.jobs_per_device`, exported by the workflow)
  gives each GPU that many slots: frozen-mode training jobs are launch-bound and leave a GPU
  mostly idle, so several can share one (then ask Snakemake for `gpu=` GPUs x that number).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from avfl.errors import UserError

LOCK_DIR_ENV = "AVFL_GPU_LOCK_DIR"
JOBS_PER_DEVICE_ENV = "AVFL_GPU_JOBS_PER_DEVICE"
# Not tempfile.gettempdir(): SLURM and other schedulers give each job its own TMPDIR, and
# locks only work where every job of the node sees the same files.
DEFAULT_LOCK_ROOT = Path("/tmp")
# Filesystems shared between nodes, where flock either spans machines (NFS) or fails (Lustre
# without the flock mount option).
SHARED_FILESYSTEMS = {
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.sshfs", "glusterfs",
    "fuse.glusterfs", "panfs", "wekafs", "9p", "cifs", "smb3", "fuse.juicefs",
}  # fmt: skip
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as the driver reports it (index in PCI bus order)."""

    index: int
    uuid: str
    name: str
    capability: tuple[int, int] | None  # CUDA compute capability
    memory_mb: int | None


@dataclass(frozen=True)
class DriverReport:
    """What the NVIDIA driver says: its version and GPUs, and where that came from."""

    source: str  # "NVML", "nvidia-smi", or why neither answered
    driver: str | None
    gpus: tuple[GpuInfo, ...]


def _nvml_report() -> DriverReport | None:
    """The driver's report through NVML (nvidia-ml-py); None when NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            except pynvml.NVMLError:
                capability = None
            try:
                memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
            except pynvml.NVMLError:
                memory = None
            gpus.append(GpuInfo(i, _text(pynvml.nvmlDeviceGetUUID(handle)),
                                _text(pynvml.nvmlDeviceGetName(handle)), capability, memory))  # fmt: skip
        return DriverReport("NVML", _text(pynvml.nvmlSystemGetDriverVersion()), tuple(gpus))
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


SMI_QUERY = "index,uuid,name,compute_cap,memory.total,driver_version"


def parse_smi(output: str) -> DriverReport:
    """`nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader,nounits` as a report."""
    gpus, driver = [], None
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            continue
        index, uuid, name, cap, memory, driver = parts
        capability = tuple(int(x) for x in cap.split(".")) if "." in cap else None
        gpus.append(GpuInfo(int(index), uuid, name, capability,  # type: ignore[arg-type]
                            int(float(memory)) if memory.replace(".", "").isdigit() else None))  # fmt: skip
    return DriverReport("nvidia-smi", driver, tuple(gpus))


def _smi_report() -> DriverReport | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_smi(done.stdout) if done.returncode == 0 else None


def driver_report() -> DriverReport:
    """The driver's version and GPUs, from NVML, else nvidia-smi. Never starts CUDA: a process
    that starts CUDA before it chooses its GPU ignores the CUDA_VISIBLE_DEVICES it sets."""
    for probe in (_nvml_report, _smi_report):
        report = probe()
        if report is not None:
            return report
    return DriverReport("no NVIDIA driver answered (neither NVML nor nvidia-smi)", None, ())


def visible_gpus(report: DriverReport | None = None) -> list[str]:
    """GPU ids this process may use, as CUDA_VISIBLE_DEVICES entries: that variable's when it
    is set (as SLURM and other schedulers do for the GPUs they assign), else every GPU the
    driver reports."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    report = report or driver_report()
    return [str(g.index) for g in report.gpus]


def lock_key(entry: str, report: DriverReport) -> str:
    """The name a GPU's locks carry: its UUID wherever it can be known, else its entry."""
    if entry.startswith(("GPU-", "MIG-")):
        return entry
    if entry.isdigit():
        for gpu in report.gpus:
            if gpu.index == int(entry):
                return gpu.uuid
    return f"index{entry}"


def scheduler_gave_one_gpu(env: Mapping[str, str], gpus: list[str]) -> bool:
    """True when a scheduler allocated this job's GPU itself: no slot to coordinate."""
    return (
        bool(env.get("SLURM_JOB_ID"))
        and any(env.get(v) for v in SLURM_GPU_VARIABLES)
        and (len(gpus) == 1)
    )


def jobs_per_device(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    text = env.get(JOBS_PER_DEVICE_ENV, "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{JOBS_PER_DEVICE_ENV}={text!r}: expected a whole number >= 1 "
                        "(the config's gpu.jobs_per_device)")  # fmt: skip
    return int(text)


def default_lock_dir() -> Path:
    return DEFAULT_LOCK_ROOT / f"avfl-gpu-locks-{os.getuid()}"


def filesystem_of(path: Path, mounts: str | None = None) -> str:
    """The filesystem type of the mount holding `path` (from /proc/self/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    path = path.resolve()
    best, kind = -1, "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (path == Path(point) or Path(point) in path.parents) and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def check_lock_dir(lock_dir: Path, mounts: str | None = None) -> None:
    kind = filesystem_of(lock_dir, mounts)
    if kind in SHARED_FILESYSTEMS:
        raise UserError(
            f"GPU lock directory {lock_dir} is on a shared filesystem ({kind}): locks there would "
            f"hold across nodes. Set {LOCK_DIR_ENV} (the config's gpu.lock_dir) to a node-local "
            "directory such as /tmp"
        )


@dataclass(frozen=True)
class Slot:
    """The GPU a job holds: its CUDA_VISIBLE_DEVICES entry, and how it got it."""

    gpu: str
    how: str  # for the job's log

    def __str__(self) -> str:
        return f"CUDA_VISIBLE_DEVICES={self.gpu} ({self.how})"


@contextmanager
def gpu_slot(
    lock_dir: str | Path | None = None, timeout_s: float = 24 * 3600, poll_s: float = 0.2,
    log: Callable[[str], None] | None = None, report: DriverReport | None = None,
) -> Iterator[Slot | None]:  # fmt: skip
    """Hold one GPU slot for the duration of the block; yields it (None without GPUs).

    Must be entered before CUDA is initialised in this process.
    """
    report = (
        report
        if report is not None
        else (None if os.environ.get("CUDA_VISIBLE_DEVICES") is not None else driver_report())
    )
    gpus = visible_gpus(report)
    if not gpus:
        yield None
        return
    if scheduler_gave_one_gpu(os.environ, gpus):
        job = os.environ["SLURM_JOB_ID"]
        yield Slot(gpus[0], f"given to SLURM job {job}: no lock")
        return
    report = report or driver_report()
    slots = jobs_per_device()
    lock_dir = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or default_lock_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    check_lock_dir(lock_dir)
    keys = {gpu: lock_key(gpu, report) for gpu in gpus}
    deadline = time.monotonic() + timeout_s
    waiting_said = False
    while True:
        for slot in range(slots):  # every GPU's first slot before any GPU's second
            for gpu in gpus:
                path = lock_dir / f"gpu-{keys[gpu]}-{slot}.lock"
                handle = open(path, "a+")  # noqa: SIM115 (held across the yield)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                except OSError as error:
                    handle.close()
                    raise UserError(_flock_message(path, error)) from error
                previous = {
                    k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
                }
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                # Index entries mean the driver's (PCI bus) order, the order the locks use.
                os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
                try:
                    yield Slot(gpu, f"slot {slot} of {keys[gpu]}, lock {path}")
                finally:
                    for key, value in previous.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU slot among {gpus} in {lock_dir} after {timeout_s} s")
        if log is not None and not waiting_said:
            log(f"waiting for a GPU slot: all {slots * len(gpus)} held ({len(gpus)} GPUs x "
                f"{slots} jobs per GPU); Snakemake's --resources gpu= should not exceed that")  # fmt: skip
            waiting_said = True
        time.sleep(poll_s)


def _flock_message(path: Path, error: OSError) -> str:
    cause = (
        "its filesystem does not support flock"
        if error.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
        else "flock failed"
    )
    return (f"cannot lock GPU slot file {path} ({error.strerror or error}): {cause}. Set "
            f"{LOCK_DIR_ENV} (the config's gpu.lock_dir) to a node-local directory such as /tmp")  # fmt: skip
