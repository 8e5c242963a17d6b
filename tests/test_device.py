"""The device policy: a GPU job that cannot use its GPU fails at once with the reason and the
fix (driver, build, compute capability), `auto` uses the CPU only where no GPU was asked for,
and `avfl doctor` says what it finds."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from avfl.device import (
    FALLBACK_INDEX,
    CudaFacts,
    asks_for_gpu,
    cuda_problem,
    resolve_device,
    runs_on,
    set_float32_precision,
)
from avfl.errors import UserError
from avfl.gpu import DriverReport, GpuInfo
from avfl.plan import needs_gpu

CU130 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")


def facts(driver="580.65.06", capability=(9, 0), name="NVIDIA H200", cuda="13.0", visible=("0",),
          arch=CU130, env=None) -> CudaFacts:  # fmt: skip
    gpus = (GpuInfo(0, "GPU-abc", name, capability, 143771),) if capability else ()
    return CudaFacts("2.14.1+cu130", "0.29.1", cuda, arch, DriverReport("NVML", driver, gpus),
                     visible, env)  # fmt: skip


def test_a_working_machine_has_no_problem():
    assert cuda_problem(facts()) is None
    assert (
        cuda_problem(facts(capability=(8, 9), name="NVIDIA L40S")) is None
    )  # sm_86 code runs on 8.9


def test_an_old_driver_names_the_versions_and_the_cu126_command():
    problem = cuda_problem(facts(driver="535.183.01"))
    assert "535.183.01" in problem and ">= 580" in problem and "CUDA 13.0" in problem
    assert f"--index-url {FALLBACK_INDEX} torch==2.14.1 torchvision==0.29.1" in problem
    assert cuda_problem(facts(driver="535.183.01", cuda="12.6")) is None  # a cu126 build runs there


def test_a_pre_turing_gpu_names_its_capability_and_the_build_s_code():
    problem = cuda_problem(facts(capability=(7, 0), name="Tesla V100-SXM2-32GB"))
    assert "Tesla V100" in problem and "sm_70" in problem and "sm_75 sm_80" in problem
    assert FALLBACK_INDEX in problem


def test_no_gpu_and_a_cpu_build_are_named():
    assert "hides every GPU" in cuda_problem(facts(visible=(), env=""))
    assert "the driver reports none" in cuda_problem(facts(visible=(), capability=None))
    assert "CPU-only build" in cuda_problem(facts(cuda=None, arch=()))
    assert "is_available() is False" in cuda_problem(facts(), cuda_available=False)


def test_which_code_runs_where():
    assert runs_on((8, 6), CU130) and runs_on((8, 9), CU130) and runs_on((12, 0), CU130)
    assert not runs_on((7, 0), CU130) and not runs_on((6, 1), CU130)
    assert runs_on((10, 3), ("sm_90", "sm_100a"))  # a family variant's cubin runs on its family
    assert not runs_on((9, 0), ("sm_100", "sm_120")) and not runs_on((12, 1), ("sm_100",))
    assert runs_on((10, 3), ("sm_90", "compute_90"))  # PTX is compiled for newer GPUs


def test_which_jobs_ask_for_a_gpu():
    assert not needs_gpu("auto", ["fbank_stats", "color_stats"])
    assert needs_gpu("auto", ["ssast", "color_stats"])
    assert needs_gpu("cuda", ["fbank_stats", "color_stats"])  # device: cuda always asks
    assert not needs_gpu("cpu", ["ssast", "resnet18"])
    assert asks_for_gpu("cuda", False) and not asks_for_gpu("auto", False)
    assert asks_for_gpu("auto", True) and not asks_for_gpu("cpu", True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_the_policy_on_a_machine_without_a_gpu(monkeypatch):
    said: list[str] = []
    assert resolve_device("cpu", True, said.append).type == "cpu"
    assert resolve_device("auto", False, said.append).type == "cpu"
    assert "asked for no GPU" in said[-1]
    monkeypatch.delenv("AVFL_STAND_IN_GPUS", raising=False)
    for requested, asked in (("auto", True), ("cuda", False)):
        with pytest.raises(UserError, match=r"asked for a GPU .* but cannot use one"):
            resolve_device(requested, asked, said.append)
    monkeypatch.setenv("AVFL_STAND_IN_GPUS", "1")
    assert resolve_device("cuda", True, said.append).type == "cpu" and "stand-ins" in said[-1]


def test_float32_precision_is_set_explicitly():
    try:
        record = set_float32_precision("tf32")
        assert (
            record["cuda_matmul"] == "tf32"
            and record["cudnn_conv"] == "tf32"
            and record["cpu"] == "ieee"
        )
        record = set_float32_precision("ieee")
        assert record == {
            "float32": "ieee",
            "cuda_matmul": "ieee",
            "cudnn_conv": "ieee",
            "cpu": "ieee",
        }
        with pytest.raises(UserError, match="expected one of ieee, tf32"):
            set_float32_precision("bf16")
    finally:
        set_float32_precision("ieee")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_doctor_runs_here_and_says_there_is_no_gpu():
    done = subprocess.run(
        [sys.executable, "-m", "avfl", "doctor"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for line in ("torch          2.", "driver", "GPU slots", "SLURM", "GPU jobs would fail here"):
        assert line in done.stdout
    strict = subprocess.run(
        [sys.executable, "-m", "avfl", "doctor", "--require-gpu"], capture_output=True, timeout=120
    )
    assert strict.returncode == 1
