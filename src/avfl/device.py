"""Where a job computes: the device policy, the check that a GPU job can use its GPU, the
float32 precision, and the facts `python -m avfl doctor` prints.

The policy, for the `federated.device` setting and whether the job's rule asked for a GPU
(`avfl.plan.needs_gpu`, which is also what the rule asks Snakemake or SLURM for):
- `cpu`: the CPU, always;
- `auto` in a job that asked for no GPU (parameter-free backbones: tiny launch-bound heads,
  as fast on a core): the CPU, and no GPU slot is taken;
- `auto` or `cuda` in a job that asked for a GPU: a GPU slot, and CUDA must work there. If it
  does not, the job fails at once with a one-line message naming the driver, the torch build,
  the GPU's compute capability and the fix, instead of training for hours on the CPU inside
  an allocation that holds a GPU.

The one exception is explicit: `AVFL_STAND_IN_GPUS=1` says the GPUs are stand-ins (the test
suite's local SLURM cluster declares fake GPU devices), and GPU jobs then train on the CPU
and say so in their log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avfl.errors import UserError
from avfl.gpu import DriverReport, Slot, driver_report, gpu_slot, visible_gpus

if TYPE_CHECKING:
    import torch

STAND_IN_ENV = "AVFL_STAND_IN_GPUS"
# The oldest Linux driver each CUDA major version's runtime runs on (NVIDIA's CUDA
# compatibility tables; 12.x and 13.x by minor-version compatibility).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
# Wheels for drivers older than 580, and for GPUs older than Turing (sm_75).
FALLBACK_INDEX = "https://download.pytorch.org/whl/cu126"
FALLBACK_CUDA = "12.6"
PRECISIONS = ("ieee", "tf32")


@dataclass(frozen=True)
class CudaFacts:
    """What decides whether this torch can run on this machine's GPUs."""

    torch_version: str
    torchvision_version: str | None
    cuda_build: str | None  # torch.version.cuda (None: a CPU-only build)
    arch_list: tuple[str, ...]  # the GPU code this build carries (sm_XY, compute_XY)
    driver: DriverReport
    visible: tuple[str, ...]  # the CUDA_VISIBLE_DEVICES entries this process may use
    cuda_visible_devices: str | None
    slurm: dict[str, str] = field(default_factory=dict)


def gather_facts(report: DriverReport | None = None) -> CudaFacts:
    """The facts, without starting CUDA (so that a GPU slot can still be chosen)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    report = report or driver_report()
    try:
        vision = version("torchvision")
    except PackageNotFoundError:
        vision = None
    try:
        arch = tuple(torch._C._cuda_getArchFlags().split()) if torch.version.cuda else ()
    except (AttributeError, RuntimeError):
        arch = tuple(torch.cuda.get_arch_list())
    slurm = {k: v for k, v in sorted(os.environ.items()) if k.startswith("SLURM_") and (
        "GPU" in k or k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_CPUS_PER_TASK"))}  # fmt: skip
    return CudaFacts(torch.__version__, vision, torch.version.cuda, arch, report,
                     tuple(visible_gpus(report)), os.environ.get("CUDA_VISIBLE_DEVICES"), slurm)  # fmt: skip


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def runs_on(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """Whether a build's GPU code runs on a GPU of this compute capability: a cubin sm_XY runs
    on X.Z for Z >= Y; PTX compute_XY is compiled for any capability >= X.Y."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        digits = digits.rstrip("af")  # sm_90a, sm_100f: family variants
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def fix_command(facts: CudaFacts) -> str:
    base = facts.torch_version.split("+")[0]
    packages = f"torch=={base}" + (
        f" torchvision=={facts.torchvision_version.split('+')[0]}"
        if facts.torchvision_version
        else ""
    )
    return f"pip install --force-reinstall --index-url {FALLBACK_INDEX} {packages}"


def _build(facts: CudaFacts) -> str:
    return f"torch {facts.torch_version} (CUDA {facts.cuda_build} build)"


def cuda_problem(facts: CudaFacts, cuda_available: bool | None = None) -> str | None:
    """Why this torch cannot compute on the GPUs this process may use; None when it can (as far
    as the facts tell: `cuda_available` is torch.cuda.is_available() once asked)."""
    if facts.cuda_build is None:
        return (f"torch {facts.torch_version} is a CPU-only build: install a CUDA build "
                f"(pip install -r requirements.lock installs the CUDA 13.0 one; for drivers older "
                f"than 580: {fix_command(facts)})")  # fmt: skip
    if not facts.visible:
        why = (f"CUDA_VISIBLE_DEVICES={facts.cuda_visible_devices!r} hides every GPU"
               if facts.cuda_visible_devices is not None else
               f"the driver reports none ({facts.driver.source})")  # fmt: skip
        return f"no GPU visible: {why}"
    need = MIN_DRIVER.get(_major(facts.cuda_build) or 0)
    have = _major(facts.driver.driver)
    if need and have is not None and have < need:
        return (f"NVIDIA driver {facts.driver.driver} is older than {_build(facts)} needs "
                f"(>= {need}): install torch built for CUDA {FALLBACK_CUDA}, which runs on driver "
                f">= {MIN_DRIVER[12]}: {fix_command(facts)}")  # fmt: skip
    by_index = {str(g.index): g for g in facts.driver.gpus} | {g.uuid: g for g in facts.driver.gpus}
    for entry in facts.visible:
        gpu = by_index.get(entry)
        if gpu is None or gpu.capability is None:
            continue
        if not runs_on(gpu.capability, facts.arch_list):
            cap = f"sm_{gpu.capability[0]}{gpu.capability[1]}"
            return (f"GPU {entry} ({gpu.name}, compute capability {cap}) cannot run "
                    f"{_build(facts)}, which has code for {' '.join(facts.arch_list)}: install "
                    f"torch built for CUDA {FALLBACK_CUDA}: {fix_command(facts)}")  # fmt: skip
    if cuda_available is False:
        return (f"torch.cuda.is_available() is False with {_build(facts)}, driver "
                f"{facts.driver.driver or 'unknown'} and GPUs {', '.join(facts.visible)}: run "
                "`python -m avfl doctor` to see why")  # fmt: skip
    return None


def _gpu_job_message(problem: str) -> str:
    return (f"this job asked for a GPU (federated.device: cuda, or auto with backbones that have "
            f"parameters) but cannot use one: {problem}. To train on the CPU instead, set "
            f"federated.device: cpu")  # fmt: skip


def asks_for_gpu(requested: str, job_gpu: bool) -> bool:
    """Whether a job computes on a GPU: its rule asked for one, or its config says cuda."""
    return requested != "cpu" and (job_gpu or requested == "cuda")


def resolve_device(
    requested: str, job_gpu: bool, log: Callable[[str], None], slot: Slot | None = None
) -> torch.device:
    """The device of a job (the policy in the module docstring); starts CUDA if it is used."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"federated.device: {requested!r}: expected auto, cpu or cuda")
    if not asks_for_gpu(requested, job_gpu):
        if requested == "auto":
            log("device auto: this job asked for no GPU (its backbones have no parameters): "
                "the CPU")  # fmt: skip
        return torch.device("cpu")
    facts = gather_facts()
    problem = cuda_problem(facts)
    available = problem is None and torch.cuda.is_available()
    if problem is None and not available:
        problem = cuda_problem(facts, cuda_available=False)
    if problem is None and slot is not None and torch.cuda.device_count() != 1:
        problem = (f"this process sees {torch.cuda.device_count()} GPUs though its slot set "
                   f"CUDA_VISIBLE_DEVICES={slot.gpu}: CUDA was started before the slot was chosen")  # fmt: skip
    if problem is None:
        return torch.device("cuda")
    if os.environ.get(STAND_IN_ENV) == "1":
        log(f"{STAND_IN_ENV}=1: the GPUs are stand-ins, this GPU job computes on the CPU "
            f"({problem})")  # fmt: skip
        return torch.device("cpu")
    raise UserError(_gpu_job_message(problem))


@contextmanager
def job_device(requested: str, job_gpu: bool, log: Callable[[str], None]) -> Iterator[torch.device]:
    """The job's device for the duration of the block: a GPU slot first where it asked for a
    GPU (avfl/gpu.py), then the device; the slot is released when the block ends."""
    if not asks_for_gpu(requested, job_gpu):
        yield resolve_device(requested, job_gpu, log)
        return
    deterministic_environment()  # before CUDA starts
    with gpu_slot(log=log) as slot:
        if slot is not None:
            log(f"GPU: {slot}")
        yield resolve_device(requested, job_gpu, log, slot)


def set_float32_precision(precision: str) -> dict[str, str]:
    """Process-wide float32 arithmetic of matrix products and convolutions; returns what the
    backends were set to (recorded with every result).

    `ieee`: full IEEE float32 everywhere. PyTorch's own default runs cuDNN convolutions in TF32
    on Ampere and newer GPUs (the embed stage's ResNet-18 and SSAST patch embedding), so GPU
    embeddings would differ from CPU ones by about 1e-3 relative. `tf32`: TF32 for CUDA
    matrix products and convolutions (faster on those GPUs); the CPU stays IEEE.
    """
    import torch

    if precision not in PRECISIONS:
        raise UserError(
            f"float32_precision: {precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    torch.backends.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    return precision_record(precision)


def precision_record(precision: str) -> dict[str, str]:
    import torch

    return {
        "float32": precision,
        "cuda_matmul": torch.backends.cuda.matmul.fp32_precision,
        "cudnn_conv": torch.backends.cudnn.conv.fp32_precision,
        "cpu": torch.backends.fp32_precision,
    }


def deterministic_environment(env: dict[str, str] | None = None) -> None:
    """cuBLAS picks reduction kernels by workspace; a fixed workspace makes a repeat of a GPU
    job give the same bits (NVIDIA's documented requirement for reproducible cuBLAS)."""
    (os.environ if env is None else env).setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def doctor_report() -> tuple[str, bool]:
    """What `python -m avfl doctor` prints, and whether a GPU job could run here."""
    import torch

    from avfl.gpu import (
        LOCK_DIR_ENV,
        check_lock_dir,
        default_lock_dir,
        filesystem_of,
        jobs_per_device,
    )

    facts = gather_facts()
    lines = [
        f"torch          {facts.torch_version} ({'CUDA ' + facts.cuda_build + ' build' if facts.cuda_build else 'CPU-only build'})",
        f"torchvision    {facts.torchvision_version or 'not installed'}",
        f"GPU code       {' '.join(facts.arch_list) or 'none'}",
        f"driver         {facts.driver.driver or 'none'} ({facts.driver.source})",
    ]
    need = MIN_DRIVER.get(_major(facts.cuda_build) or 0)
    if need:
        lines.append(f"               this build needs driver >= {need}")
    if not facts.driver.gpus:
        lines.append("GPUs           none")
    for gpu in facts.driver.gpus:
        cap = f"sm_{gpu.capability[0]}{gpu.capability[1]}" if gpu.capability else "unknown"
        runs = runs_on(gpu.capability, facts.arch_list) if gpu.capability else None
        memory = f"{gpu.memory_mb / 1024:.0f} GiB" if gpu.memory_mb else "? GiB"
        lines.append(f"GPU {gpu.index}          {gpu.name}, {cap}, {memory}, {gpu.uuid}: "
                     + {True: "this torch runs on it", False: "this torch has no code for it",
                        None: "capability unknown"}[runs])  # fmt: skip
    env = facts.cuda_visible_devices
    lines.append(f"visible        {', '.join(facts.visible) or 'none'} (CUDA_VISIBLE_DEVICES "
                 f"{'unset' if env is None else repr(env)})")  # fmt: skip
    problem = cuda_problem(facts)
    available = None
    if problem is None:
        available = torch.cuda.is_available()
        problem = cuda_problem(facts, available)
    if problem is None:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(
            f"CUDA           works: {torch.cuda.device_count()} device(s): {', '.join(names)}"
        )
    else:
        lines.append(f"CUDA           cannot be used: {problem}")
    lock_dir = os.environ.get(LOCK_DIR_ENV) or str(default_lock_dir())
    try:
        per_device = str(jobs_per_device())
    except UserError as error:
        per_device = str(error)
    lines.append(f"GPU slots      {per_device} job(s) per GPU, locks in {lock_dir} "
                 f"({filesystem_of(Path(lock_dir))})")  # fmt: skip
    try:
        check_lock_dir(Path(lock_dir))
    except UserError as error:
        lines.append(f"               {error}")
    lines.append("SLURM          " + (", ".join(f"{k}={v}" for k, v in facts.slurm.items())
                                      or "not inside a SLURM job"))  # fmt: skip
    lines.append(f"precision      float32 matmul {torch.backends.cuda.matmul.fp32_precision}, "
                 f"cuDNN conv {torch.backends.cudnn.conv.fp32_precision} (PyTorch's defaults; "
                 "jobs set federated.float32_precision)")  # fmt: skip
    ok = problem is None
    lines.append("verdict        " + ("GPU jobs can run here" if ok else
                 "GPU jobs would fail here; jobs that ask for no GPU run (federated.device: cpu, "
                 "or auto with parameter-free backbones)"))  # fmt: skip
    return "\n".join(lines) + "\n", ok


def device_record(device: torch.device, precision: str) -> dict[str, Any]:
    """The device and precision a result was computed with (metrics.json, embedding sidecars)."""
    import platform

    import torch

    record: dict[str, Any] = {"type": device.type, "precision": precision_record(precision)}
    if device.type == "cuda":
        index = device.index or 0
        major, minor = torch.cuda.get_device_capability(index)
        record |= {"name": torch.cuda.get_device_name(index), "capability": f"sm_{major}{minor}",
                   "cuda": torch.version.cuda}  # fmt: skip
    else:
        record["name"] = platform.processor() or platform.machine()
    return record
