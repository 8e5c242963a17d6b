"""One prepared command for a lent GPU machine: does the training path run on CUDA, and how
fast is it against the same machine's CPUs?

Nothing in the CPU test suite or the CPU benchmarks says anything about the GPU path
(shared/reviews/gpu-readiness.md, findings 16 and 17). A lent machine gives about ten
minutes, may run another Python and torch than requirements.lock, and may lack snakemake,
PyAV, jsonschema and pynvml, with no network. So this script needs only the standard
library at the top and runs each check as a subprocess with its own timeout, captures its
output and carries on after a failure. In order:

  wheels   jsonschema: avfl.config imports it, and grid_speed's prepare() loads the config.
           If `.whl/` at the repository root holds wheels, they are installed with
           `pip install --no-index --no-deps --target $TMPDIR/site .whl/*.whl` (by unzipping
           them where pip is missing) and that folder goes first on PYTHONPATH; `src` is on
           it for every step. Without jsonschema the steps that load a config are skipped.
  facts    Python, torch build, CUDA, GPU name and capability, which modules import (with
           that PYTHONPATH), PyTorch's float32 precision defaults, whether `.to(cuda)` of a
           cuda tensor is the same tensor (the engine's buckets rely on it), and nvidia-smi's
           driver and GPU.
  a doctor     `python -m avfl doctor`: torch build, driver, GPUs, the GPU verdict.
  b pytest     `pytest -m gpu tests/test_gpu_cuda.py tests/test_stacked.py`: the written-out
               kernels against autograd, every method on CUDA, a repeat, batched against
               single runs, a resume (again with --noconftest if tests/conftest.py
               cannot be imported, e.g. without PyAV).
  c grid       the batched sub-grid (grid_speed.py --ways batched --rounds 20) on the GPU by
               1 process with --kernels (summed GPU kernel time: the floor; kernel seconds over
               wall: the GPU-busy fraction, 1 - that being the host-bound share), then by 2 and
               by 4 processes sharing the GPU (finding 7: does sharing a GPU pay?). Their
               GPU-busy fraction is estimated from the 1-process kernel seconds (the kernels do
               not change with the number of processes); --kernels-all measures it instead.
               nvidia-smi dmon samples SM utilisation meanwhile, where nvidia-smi exists.
  d breakdown  run_breakdown.py --device cuda --rounds 20: where a job's time goes on the GPU.
  e local step local_step.py --device cuda: ms per (row, step), written-out against vmap.
  f grid, CPU  the same sub-grid on the machine's own CPUs, min(8, cores) processes: is a GPU
               worth it for frozen mode?
  g breakdown, BMSFed (only with time left): BMSFed's server share on the GPU (finding 5).
  h ssl step (only with time left): FSSUAVL's SimCLR rounds on the GPU, the small CNN at
               32 and 64 px and ResNet-18 at 128 px: seconds per round, and what the embedded
               grid's 36 self-supervised runs would take (config/ssl.yaml's full-size grid).

A step that would not fit in what is left of --budget-s (after the shortest time every later
step needs) is skipped, and the report says so. On a machine without a usable CUDA device it
runs only the facts, the wheels and the doctor, says what it would have run, writes the
report and exits 0.

The report: `<out>/gpu_check.txt` (each step's command, exit code, seconds and output tail,
and a summary table of the key figures) and `<out>/gpu_check.json` (every figure, the
machine: CPU model, cores, GPU, driver, torch build; the date; the code's version, by
`git describe` where there is a git repository and by a hash of the code's files always).
`<out>` is $OUT where set, else benchmarks/results/ (or --out). The exit code is 0 unless a
step that ran failed or timed out.

Where GPU steps ran, the report (less the output tails) is also written as a benchmark
record (benchmarks/record.py) under benchmarks/results/gpu_check/, and, when `<out>` is
elsewhere, a copy at `<out>/benchmarks/results/gpu_check/` (so that $OUT brings it back, to
be copied into the repository as is); `--no-record` skips both. Without CUDA nothing is
written under benchmarks/results/gpu_check/. The benchmarks it starts run with `--no-record`:
their figures are in this record.

    python benchmarks/gpu_check.py [--budget-s 540] [--dry-run] [--out DIR] [--only KEY ...]

On the lent machine, as one command of the device tool (its $OUT comes back), with a
timeout that leaves room for the budget: `python3 benchmarks/gpu_check.py` (timeout_s 600).
If `.whl/` is ignored by git (.git/info/exclude), pass it in the tool's `carry`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import record as benchmark_record  # the standard library only, torch left unimported here

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
# The gpu-marked tests: the training path on CUDA, and the written-out kernels against autograd.
GPU_TESTS = (REPO / "tests/test_gpu_cuda.py", REPO / "tests/test_stacked.py")
WHEELS = REPO / ".whl"  # wheels a lent machine lacks (jsonschema and its dependencies)
TAIL_TXT = 4000  # characters of each step's output in gpu_check.txt
TAIL_JSON = 20000  # and in gpu_check.json
ROUNDS = 20

# Run in a subprocess with the steps' PYTHONPATH: what this Python and torch can do here.
PROBE = r"""
import importlib, importlib.util, json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
mods = ["torch", "torchvision", "torchaudio", "numpy", "yaml", "jsonschema", "attrs",
        "referencing", "rpds", "jsonschema_specifications", "sklearn", "scipy", "threadpoolctl",
        "tqdm", "matplotlib", "pytest", "snakemake", "av", "pynvml"]
out["modules"] = {m: importlib.util.find_spec(m) is not None for m in mods}
imports = {}
for name in ["jsonschema", "yaml", "avfl.config", "avfl.train", "avfl.cli", "avfl.fl.local"]:
    try:
        importlib.import_module(name)
        imports[name] = None
    except Exception as error:
        imports[name] = f"{type(error).__name__}: {error}"
out["imports"] = imports
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_build"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        out["arch_list"] = torch.cuda.get_arch_list()
    except Exception:
        out["arch_list"] = []
    out["precision_defaults"] = {
        "cuda_matmul": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
        "cudnn_conv": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        out["device_count"] = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": props.name, "capability": f"sm_{props.major}{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1)}
        t = torch.zeros(3, device="cuda")
        out["to_is_same"] = t.to(torch.device("cuda")) is t
        torch.cuda.synchronize()
except Exception as error:  # no torch, or CUDA visible but unusable: the GPU steps are skipped
    out["torch_error"] = f"{type(error).__name__}: {error}"
    out["cuda_available"] = False
print("PROBE " + json.dumps(out))
"""


@dataclass
class Step:
    key: str
    title: str
    command: list[str]
    timeout_s: int  # its own limit
    min_s: int  # the least time worth starting it with
    gpu: bool = True  # runs only where CUDA works
    needs: tuple[str, ...] = ()  # probe imports that must work
    json_path: Path | None = None  # grid_speed's --json
    dmon: bool = False  # sample SM utilisation while it runs
    optional: bool = False  # only with time left; no time is reserved for it
    status: str = "pending"  # ok, failed, timeout, skipped
    started: float = 0.0
    rc: int | None = None
    seconds: float | None = None
    reason: str | None = None
    output: str = ""
    commands_run: list[list[str]] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def shell(command: list[str]) -> str:
    return " ".join(c if re.fullmatch(r"[\w./:=+,@-]+", c) else repr(c) for c in command)


def run_command(command: list[str], timeout: float, env: dict[str, str]) -> tuple[int, str, bool]:
    """Run in its own process group, output to a file; on timeout the whole group goes (a
    benchmark's worker processes with it). Returns (exit code, output, timed out)."""
    with tempfile.TemporaryFile("w+b") as log:
        try:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        except OSError as error:
            return 127, f"could not start: {error}", False
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group outlived its leader
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    return (124 if timed_out else proc.returncode), text, timed_out


def tail(text: str, n: int) -> str:
    return text if len(text) <= n else "[...]\n" + text[-n:]


# --- machine facts -------------------------------------------------------------------------


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def nvidia_smi() -> dict | None:
    if not shutil.which("nvidia-smi"):
        return None
    fields = "name,driver_version,memory.total,uuid"
    code, out, _ = run_command(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                               30, dict(os.environ))  # fmt: skip
    if code:
        return {"error": out.strip()[-500:]}
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append(dict(zip(["name", "driver", "memory", "uuid"], parts, strict=True)))
    return {"gpus": gpus}


def code_version() -> dict:
    """`git describe` where this is a git checkout, and always a hash of the code's files (a
    lent machine's copy of the working tree may have no .git)."""
    described = None
    if shutil.which("git") and (REPO / ".git").exists():
        code, out, _ = run_command(["git", "describe", "--always", "--dirty"], 30, dict(os.environ))
        described = out.strip() if code == 0 else None
    digest = hashlib.sha256()
    for top in ("src", "benchmarks", "tests", "config", "workflow"):
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and "results" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return {"git_describe": described, "files_sha256": digest.hexdigest()[:16]}


# --- the environment of the steps ------------------------------------------------------------


def install_wheels(env: dict[str, str], log: list[str]) -> tuple[Path | None, dict]:
    """Wheels in .whl/ into a fresh folder under $TMPDIR; returns it (None: nothing there)."""
    wheels = sorted(WHEELS.glob("*.whl"))
    info: dict = {"wheels": [w.name for w in wheels]}
    if not wheels:
        info["note"] = "no .whl/ folder with wheels at the repository root"
        return None, info
    site = Path(tempfile.mkdtemp(prefix="avfl-gpu-check-site-"))
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--target", str(site), *map(str, wheels)]  # fmt: skip
    code, out, _ = run_command(command, 120, env)
    info |= {"command": shell(command), "rc": code, "output": tail(out, 2000), "site": str(site)}
    if code:  # no pip here: a wheel is a zip of what goes into site-packages
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        info["fallback"] = "pip failed or is missing: the wheels were unzipped into the folder"
    log.append(f"wheels: {len(wheels)} from .whl/ into {site} (pip rc {code})")
    return site, info


def probe(env: dict[str, str], timeout: float) -> tuple[dict, str, int, float]:
    start = time.perf_counter()
    code, out, _ = run_command([sys.executable, "-c", PROBE], timeout, env)
    facts: dict = {}
    for line in out.splitlines():
        if line.startswith("PROBE "):
            facts = json.loads(line[len("PROBE ") :])
    if not facts:
        facts = {"probe_error": tail(out, 2000), "cuda_available": False}
    return facts, out, code, time.perf_counter() - start


# --- nvidia-smi dmon ---------------------------------------------------------------------------


class Dmon:
    """SM utilisation sampled once a second while a step runs (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.log = tempfile.TemporaryFile("w+b")  # noqa: SIM115 (closed in stop)
            try:
                self.proc = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1"],
                                             stdout=self.log, stderr=subprocess.STDOUT,
                                             start_new_session=True)  # fmt: skip
            except OSError:
                self.proc = None

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace")
        self.log.close()
        return parse_dmon(text)


def parse_dmon(text: str) -> dict | None:
    columns: list[str] = []
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            names = line.lstrip("#").split()
            if "sm" in names and not columns:
                columns = names
            continue
        parts = line.split()
        if not columns or len(parts) != len(columns) or parts[0] != "0":  # GPU 0 only
            continue
        for name, value in zip(columns, parts, strict=True):
            if name != "gpu" and re.fullmatch(r"\d+(\.\d+)?", value):
                samples.setdefault(name, []).append(float(value))
    if "sm" not in samples:
        return None
    sm = samples["sm"]
    figures = {
        "samples": len(sm),
        "sm_mean_pct": round(sum(sm) / len(sm), 1),
        "sm_max_pct": max(sm),
    }
    if samples.get("mem"):
        figures["mem_mean_pct"] = round(sum(samples["mem"]) / len(samples["mem"]), 1)
    return figures


# --- what each step's output says --------------------------------------------------------------

GRID_WAY = re.compile(
    r"^(baseline|engine|batched)\s+(\d+) processes\s+([\d.]+) s\s+\(([\d.]+) s per run\)"
)
BREAKDOWN_COLUMNS = ["runs", "wall_s", "s_per_run", "loading_s", "rounds_s", "dev_evaluation_s",
                     "checkpoints_s", "test_evaluation_record_s", "writing_other_s"]  # fmt: skip
LOCAL_ROW = re.compile(r"^(audio|av)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x")


def parse_figures(step: Step) -> dict:
    text = step.output
    if step.key.startswith("grid"):
        if step.json_path and step.json_path.exists():
            return json.loads(step.json_path.read_text())
        ways = {}  # a step cut short: what it printed
        for line in text.splitlines():
            match = GRID_WAY.match(line)
            if match:
                ways[match.group(1)] = {"processes": int(match.group(2)),
                                        "wall_s": float(match.group(3)),
                                        "s_per_run": float(match.group(4))}  # fmt: skip
        return {"ways": ways, "from": "printed lines (no JSON written)"} if ways else {}
    if step.key == "pytest":
        counts = {}
        for line in reversed(text.splitlines()):
            found = re.findall(
                r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line
            )
            if found and (" in " in line or line.startswith("=")):
                counts = {kind: int(n) for n, kind in found}
                counts["line"] = line.strip("= ")
                break
        return counts
    if step.key.startswith("breakdown"):
        jobs = {}
        for line in text.splitlines():
            for label in ("one run per job (before)", "a seed's rates (batched)"):
                if line.startswith(label):
                    numbers = [float(x) for x in line[len(label) :].split()]
                    if len(numbers) == len(BREAKDOWN_COLUMNS):
                        jobs[label] = dict(zip(BREAKDOWN_COLUMNS, numbers, strict=True))
        head = next((line for line in text.splitlines() if "start-up + imports" in line), None)
        return {"jobs": jobs, "header": head} if jobs else {}
    if step.key == "local_step":
        rows = [
            {"task": m.group(1), "rows": int(m.group(2)), "vmap_ms": float(m.group(3)),
             "written_out_ms": float(m.group(4)), "ratio": float(m.group(5))}
            for m in map(LOCAL_ROW.match, text.splitlines()) if m
        ]  # fmt: skip
        return {"ms_per_row_step": rows} if rows else {}
    if step.key == "doctor":
        keep = ("torch", "driver", "GPU", "CUDA", "verdict", "precision")
        return {"lines": [line for line in text.splitlines() if line.startswith(keep)]}
    return {}


# --- the plan ----------------------------------------------------------------------------------


def plan(work: Path, n_cores: int, kernels_all: bool) -> list[Step]:
    py = sys.executable
    grid = [py, "benchmarks/grid_speed.py", "--ways", "batched", "--rounds", str(ROUNDS),
            "--no-record"]  # fmt: skip
    config = ("avfl.config",)

    def grid_step(key, title, device, parallel, kernels, timeout, least):
        path = work / f"{key}.json"
        command = [*grid, "--device", device, "--parallel", str(parallel), "--json", str(path)]
        return Step(key, title, command + (["--kernels"] if kernels else []), timeout, least,
                    gpu=True, needs=config, json_path=path, dmon=device == "cuda")  # fmt: skip

    cpu_parallel = min(8, n_cores)
    steps = [Step("doctor", "a. python -m avfl doctor", [py, "-m", "avfl", "doctor"], 60, 10,
                  gpu=False)]  # fmt: skip
    steps.append(Step("pytest", "b. pytest -m gpu tests/test_gpu_cuda.py tests/test_stacked.py",
                      [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                       *(str(t.relative_to(REPO)) for t in GPU_TESTS)], 180, 45, needs=config))  # fmt: skip
    steps.append(grid_step("grid_cuda_p1", "c1. batched sub-grid on the GPU, 1 process, --kernels",
                           "cuda", 1, True, 200, 60))  # fmt: skip
    for n in (2, 4):
        steps.append(grid_step(f"grid_cuda_p{n}", f"c{n}. batched sub-grid on the GPU, {n} processes share it",
                               "cuda", n, kernels_all, 90, 30))  # fmt: skip
    steps.append(Step("breakdown", "d. run_breakdown.py --device cuda (MultiFL)",
                      [py, "benchmarks/run_breakdown.py", "--device", "cuda", "--rounds", str(ROUNDS),
                       "--no-record"],
                      75, 25, needs=config))  # fmt: skip
    steps.append(Step("local_step", "e. local_step.py --device cuda",
                      [py, "benchmarks/local_step.py", "--device", "cuda", "--rows", "1", "16",
                       "64", "128", "--repeats", "3", "--no-record"], 60, 15))  # fmt: skip
    steps.append(grid_step("grid_cpu", f"f. the same sub-grid on the CPUs, {cpu_parallel} processes",
                           "cpu", cpu_parallel, False, 120, 40))  # fmt: skip
    steps.append(Step("breakdown_bmsfed", "g. run_breakdown.py --device cuda --method bmsfed (time left)",
                      [py, "benchmarks/run_breakdown.py", "--device", "cuda", "--method", "bmsfed",
                       "--rounds", str(ROUNDS), "--no-record"], 75, 30, needs=config, optional=True))  # fmt: skip
    steps.append(Step("ssl_step", "h. ssl_step.py --device cuda: FSSUAVL's pre-training (time left)",
                      [py, "benchmarks/ssl_step.py", "--device", "cuda", "--rounds", "3",
                       "--no-record"], 150, 40, optional=True))  # fmt: skip
    return steps


def run_pytest(step: Step, timeout: float, env: dict[str, str]) -> tuple[int, str, bool]:
    """The gpu tests; again with --noconftest where tests/conftest.py cannot be imported."""
    code, out, timed_out = run_command(step.command, timeout, env)
    step.commands_run.append(step.command)
    conftest_broken = "conftest" in out and re.search(r"ImportError|ModuleNotFoundError", out)
    if code not in (0, 5) and not timed_out and conftest_broken:
        retry = [*step.command, "--noconftest"]
        left = timeout - (time.perf_counter() - step.started)
        if left > 10:
            code2, out2, timed_out = run_command(retry, left, env)
            step.commands_run.append(retry)
            out = (f"{out}\n--- tests/conftest.py could not be imported: again with "
                   f"--noconftest ---\n{out2}")  # fmt: skip
            code = code2
    return code, out, timed_out


# --- the report --------------------------------------------------------------------------------


def fmt(value, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def summary(steps: dict[str, Step]) -> tuple[list[str], dict]:
    lines, figures = [], {}
    grid = {}
    kernel_s = None
    p1 = steps.get("grid_cuda_p1")
    if p1 and p1.figures.get("kernels"):
        kernel_s = p1.figures["kernels"].get("floor_s")
    cpu = steps.get("grid_cpu")
    cpu_wall = cpu.figures.get("ways", {}).get("batched", {}).get("wall_s") if cpu else None
    rows = []
    for key in ("grid_cuda_p1", "grid_cuda_p2", "grid_cuda_p4", "grid_cpu"):
        step = steps.get(key)
        if step is None:
            continue
        way = step.figures.get("ways", {}).get("batched", {})
        wall = way.get("wall_s")
        k = step.figures.get("kernels") or {}
        busy = k.get("gpu_busy_fraction")
        how = "measured" if busy is not None else None
        if busy is None and key != "grid_cpu" and kernel_s and wall:
            busy, how = kernel_s / wall, "estimated from c1's kernel seconds"
        entry = {"status": step.status, "wall_s": wall, "s_per_run": way.get("s_per_run"),
                 "kernel_s": k.get("floor_s"), "gpu_busy_fraction": busy, "gpu_busy": how,
                 "sm_util": step.figures.get("dmon"),
                 "cpu_over_this": (cpu_wall / wall) if cpu_wall and wall else None}  # fmt: skip
        grid[key] = entry
        sm = (entry["sm_util"] or {}).get("sm_mean_pct")
        rows.append(f"  {step.title[:58]:<58} {fmt(wall):>8} {fmt(way.get('s_per_run'), '.2f'):>7} "
                    f"{fmt(k.get('floor_s')):>9} {fmt(busy, '.1%'):>8}{'*' if how and how != 'measured' else ' '} "
                    f"{fmt(sm):>7} {fmt(entry['cpu_over_this'], '.2f'):>8}  {step.status}")  # fmt: skip
    figures["grid"] = grid
    if not any(entry["wall_s"] for entry in grid.values()):
        rows = []
        why = dict.fromkeys(steps[key].reason or steps[key].status for key in grid)
        lines.append(f"batched sub-grid: not measured ({'; '.join(why)})")
    if rows:
        n_runs = next((s.figures.get("settings", {}).get("runs") for s in steps.values()
                       if s.figures.get("settings")), None)  # fmt: skip
        lines.append(f"batched sub-grid ({n_runs or '?'} runs, {ROUNDS} rounds, 100 clients):")
        lines.append(f"  {'run':<58} {'wall s':>8} {'s/run':>7} {'kernels s':>9} {'GPU busy':>9} "
                     f"{'SM %':>7} {'CPU/this':>8}  status")  # fmt: skip
        lines += rows
        lines.append("  (* estimated from c1's kernel seconds; SM %: nvidia-smi dmon's mean over the "
                     "whole step, data preparation included; CPU/this: the CPU sub-grid's wall "
                     "over this one's)")  # fmt: skip
        if kernel_s == 0:
            lines.append("  WARNING: c1's profiler saw no GPU kernel (CUPTI missing?): no floor")
        if p1 and ((p1.figures.get("kernels") or {}).get("gpu_busy_fraction") or 0) > 1.0:
            lines.append(
                "  WARNING: c1's kernel seconds exceed its wall: the kernel count is wrong"
            )
    for key in ("breakdown", "breakdown_bmsfed"):
        step = steps.get(key)
        if step and step.figures.get("jobs"):
            figures[key] = step.figures
            lines.append(f"{step.title}:")
            for label, job in step.figures["jobs"].items():
                lines.append(f"  {label:<26} {job['runs']:>3.0f} runs  {job['wall_s']:>6.1f} s wall  "
                             f"{job['s_per_run']:>6.2f} s/run  rounds {job['rounds_s']:.2f} s  "
                             f"loading {job['loading_s']:.2f} s")  # fmt: skip
    step = steps.get("local_step")
    if step and step.figures.get("ms_per_row_step"):
        figures["local_step"] = step.figures
        lines.append("local_step on the GPU, ms per (row, step): "
                     + ", ".join(f"{r['task']} {r['rows']} rows {r['written_out_ms']:.3f} "
                                 f"(vmap {r['vmap_ms']:.3f})" for r in step.figures["ms_per_row_step"]))  # fmt: skip
    step = steps.get("pytest")
    if step and step.figures.get("line"):
        figures["pytest"] = step.figures
        lines.append(f"pytest -m gpu: {step.figures['line']}")
    step = steps.get("doctor")
    if step:
        verdict = [line for line in step.figures.get("lines", []) if line.startswith("verdict")]
        if verdict:
            lines.append(f"doctor: {verdict[0]}")
    return lines, figures


def write_report(out_dir: Path, record: dict, steps: list[Step], notes: list[str]) -> list[str]:
    by_key = {s.key: s for s in steps}
    lines, figures = summary(by_key)
    record["summary"] = figures
    record["steps"] = [
        {"key": s.key, "title": s.title, "command": shell(s.command),
         "commands_run": [shell(c) for c in s.commands_run], "status": s.status, "rc": s.rc,
         "seconds": round(s.seconds, 2) if s.seconds is not None else None, "reason": s.reason,
         "timeout_s": s.timeout_s, "figures": s.figures, "output_tail": tail(s.output, TAIL_JSON)}
        for s in steps
    ]  # fmt: skip
    record["notes"] = notes
    facts, machine = record["probe"], record["machine"]
    gpu = facts.get("gpu") or {}
    smi = (machine.get("nvidia_smi") or {}).get("gpus") or [{}]
    text = [
        f"avfl GPU check, {record['date']}, code {record['code']['git_describe'] or '(no git)'} "
        f"(files {record['code']['files_sha256']})",
        f"machine: {machine['cpu_model']}, {machine['cores']} cores; GPU "
        + (f"{gpu.get('name') or smi[0].get('name')} {gpu.get('capability', '')} "
           f"{gpu.get('memory_gib', '?')} GiB, driver {smi[0].get('driver', 'unknown')}"
           if gpu or smi[0] else "none"),
        f"python {facts.get('python')} ({facts.get('executable')}); torch {facts.get('torch')} "
        f"(CUDA build {facts.get('cuda_build')}, cuDNN {facts.get('cudnn')}); CUDA usable: "
        f"{facts.get('cuda_available')}; .to(cuda) is the same tensor: {facts.get('to_is_same')}",
        f"precision defaults: {facts.get('precision_defaults')}",
        "modules missing: " + (", ".join(m for m, ok in facts.get("modules", {}).items() if not ok) or "none"),
        "imports failing: " + ("; ".join(f"{m} ({e})" for m, e in facts.get("imports", {}).items() if e) or "none"),
        f"budget {record['budget_s']} s, used {record['elapsed_s']} s; PYTHONPATH {record['pythonpath']}",
        "",
        "notes:",
        *(f"  - {n}" for n in notes or ["none"]),
        "",
        "steps:",
        *(f"  {s.title[:62]:<62} {s.status:<8} rc {fmt(s.rc, 'd'):>4} {fmt(s.seconds):>7} s"
          + (f"  ({s.reason})" if s.reason else "") for s in steps),
        "",
        "summary:",
        *(lines or ["  no figures (no step measured anything)"]),
        "",
    ]  # fmt: skip
    for s in steps:
        text += [f"=== {s.title} ===", f"command: {shell(s.command)}"]
        text += [f"ran: {shell(c)}" for c in s.commands_run if c != s.command]
        text.append(f"status {s.status}, exit code {s.rc}, {fmt(s.seconds)} s, limit {s.timeout_s} s"
                    + (f"; {s.reason}" if s.reason else ""))  # fmt: skip
        if s.output:
            text += ["--- output (tail) ---", tail(s.output.rstrip(), TAIL_TXT)]
        text.append("")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.txt").write_text("\n".join(text) + "\n")
    (out_dir / "gpu_check.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return lines


def write_record(out_dir: Path, report: dict, facts: dict, notes: str | None = None) -> Path:
    """The report as a benchmark record (benchmarks/record.py), without the steps' output
    tails; a copy under `<out_dir>/benchmarks/results/gpu_check/` where `<out_dir>` is not
    benchmarks/results itself."""
    figures = {key: report[key] for key in ("summary", "probe", "budget_s", "elapsed_s",
                                            "cuda", "code", "pythonpath") if key in report}  # fmt: skip
    figures["wheels"] = report.get("wheels", {}).get("wheels", [])
    figures["steps"] = [{k: v for k, v in step.items() if k != "output_tail"}
                        for step in report["steps"]]  # fmt: skip
    machine = benchmark_record.machine(use_torch=False)
    gpu = facts.get("gpu") or {}
    smi = (report["machine"].get("nvidia_smi") or {}).get("gpus") or [{}]
    machine |= {"torch": facts.get("torch"), "torch_cuda": facts.get("cuda_build"),
                "python": facts.get("python") or machine["python"],
                "gpu": gpu.get("name") or smi[0].get("name") or machine["gpu"],
                "gpu_capability": gpu.get("capability"), "gpu_memory_gib": gpu.get("memory_gib"),
                "driver": smi[0].get("driver"), "cudnn": facts.get("cudnn")}  # fmt: skip
    notes = "; ".join(filter(None, [notes, *report["notes"]])) or None
    path = benchmark_record.write("gpu_check", figures, notes=notes, machine_info=machine)
    if out_dir.resolve() != benchmark_record.results_dir().resolve():
        copy = out_dir / "benchmarks/results/gpu_check" / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        print(f"record copy: {copy}")
    return path


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=540,
                        help="seconds for everything; steps that would not fit are skipped")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--out", help="report folder (default: $OUT, else benchmarks/results)")
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these steps")
    parser.add_argument("--kernels-all", action="store_true",
                        help="profile the 2- and 4-process GPU runs too (doubles their time)")  # fmt: skip
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    out_dir = Path(args.out or os.environ.get("OUT") or BENCH / "results")
    work = Path(tempfile.mkdtemp(prefix="avfl-gpu-check-"))
    steps = plan(work, cores(), args.kernels_all)
    if args.only:
        unknown = set(args.only) - {s.key for s in steps}
        if unknown:
            parser.error(f"unknown steps {sorted(unknown)}; steps: {[s.key for s in steps]}")
        for s in steps:
            if s.key not in args.only:
                s.status, s.reason = "skipped", "not in --only"

    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    wheels = sorted(WHEELS.glob("*.whl"))
    print(f"gpu_check: budget {args.budget_s:.0f} s, report to {out_dir}")
    print("  facts: a probe of this Python, torch and CUDA (subprocess)")
    if wheels:
        print(f"  wheels: pip install --no-index --no-deps --target $TMPDIR/site .whl/*.whl "
              f"({len(wheels)} wheels), then PYTHONPATH=$TMPDIR/site:src")  # fmt: skip
    else:
        print("  wheels: none in .whl/; PYTHONPATH=src")
    for s in steps:
        flag = "" if s.status == "pending" else f"  [{s.reason}]"
        print(f"  {s.title}: {shell(s.command)}  (limit {s.timeout_s} s, at least {s.min_s} s)"
              f"{' [CUDA machine]' if s.gpu else ''}{' [if time is left]' if s.optional else ''}{flag}")  # fmt: skip
    if args.dry_run:
        print("dry run: nothing was run")
        shutil.rmtree(work, ignore_errors=True)
        return 0

    notes: list[str] = []
    site, wheel_info = install_wheels(env, notes) if wheels else (None, {"wheels": []})
    paths = ([str(site)] if site else []) + [str(REPO / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    facts, probe_out, probe_rc, probe_s = probe(env, 90)
    print(f"facts: python {facts.get('python')}, torch {facts.get('torch')}, CUDA usable "
          f"{facts.get('cuda_available')}, GPU {(facts.get('gpu') or {}).get('name')} ({probe_s:.0f} s)")  # fmt: skip
    imports = facts.get("imports", {})
    if imports.get("jsonschema"):
        notes.append(
            f"jsonschema cannot be imported ({imports['jsonschema']}): avfl.config imports it and "
            "grid_speed's prepare() calls load_config, so the steps that load a config are "
            "skipped. Ship cp312 wheels in .whl/ (jsonschema, jsonschema-specifications, "
            "referencing, rpds-py, and attrs where it is missing)"
            + (" - the wheels in .whl/ were installed, yet it still fails" if site else "")
        )  # fmt: skip
    elif site:
        notes.append(
            f"jsonschema imports from the wheels in .whl/ ({len(wheels)} installed in {site})"
        )
    for module in ("snakemake", "av", "pynvml"):
        if not facts.get("modules", {}).get(module, True):
            notes.append(f"{module} is not installed (not needed by these steps)")
    cuda = bool(facts.get("cuda_available"))
    if not cuda:
        why = facts.get("torch_error") or "torch.cuda.is_available() is False"
        notes.append(f"no usable CUDA device ({why}): only the steps that need none ran; the "
                     "others are listed with their commands")  # fmt: skip

    def broken(step: Step) -> list[str]:
        return [m for m in step.needs if imports.get(m)]

    def will_run(step: Step) -> bool:
        return (
            step.status == "pending"
            and not step.optional
            and (cuda or not step.gpu)
            and not broken(step)
        )

    for i, s in enumerate(steps):
        if s.status != "pending":
            continue
        if s.gpu and not cuda:
            s.status = "skipped"
            s.reason = "no usable CUDA device" + (
                " (this CPU run is the GPU runs' comparison)" if s.key == "grid_cpu" else ""
            )
            continue
        if broken(s):
            first = broken(s)[0]
            s.status, s.reason = "skipped", f"{first} cannot be imported ({imports[first]})"
            continue
        if s.key == "pytest":
            if not facts.get("modules", {}).get("pytest"):
                s.status, s.reason = "skipped", "pytest is not installed"
                continue
            if not all(t.exists() for t in GPU_TESTS):
                s.status, s.reason = "skipped", "a gpu test file does not exist"
                continue
        left = args.budget_s - (time.perf_counter() - started)
        later = sum(t.min_s for t in steps[i + 1 :] if will_run(t))
        limit = min(s.timeout_s, left - later)
        if limit < s.min_s:
            s.status = "skipped"
            s.reason = (f"would not fit: {left:.0f} s of the budget left, {later} s kept for the "
                        f"later steps, it needs at least {s.min_s} s")  # fmt: skip
            continue
        s.timeout_s = int(limit)
        print(
            f"[{time.perf_counter() - started:5.0f} s] {s.title} (limit {s.timeout_s} s)",
            flush=True,
        )
        dmon = Dmon() if s.dmon else None
        s.started = time.perf_counter()
        if s.key == "pytest":
            s.rc, s.output, timed_out = run_pytest(s, s.timeout_s, env)
        else:
            s.rc, s.output, timed_out = run_command(s.command, s.timeout_s, env)
            s.commands_run.append(s.command)
        s.seconds = time.perf_counter() - s.started
        s.figures = parse_figures(s)
        if dmon is not None:
            s.figures["dmon"] = dmon.stop()
        s.status = "timeout" if timed_out else ("ok" if s.rc == 0 else "failed")
        if timed_out:
            s.reason = f"killed after {s.timeout_s} s"
        elif s.key == "pytest" and s.rc == 5:
            s.reason = "pytest collected no gpu tests"
        elif s.key == "pytest" and s.rc == 0 and not s.figures.get("passed"):
            s.status, s.reason = "failed", "no gpu test ran (all skipped?) though CUDA works"
        print(f"        {s.status}, rc {s.rc}, {s.seconds:.1f} s"
              + (f": {s.output.strip().splitlines()[-1][:160]}" if s.output.strip() else ""), flush=True)  # fmt: skip

    machine = {"cpu_model": benchmark_record.cpu_model(), "cores": cores(), "cpu_count": os.cpu_count(),
               "nvidia_smi": nvidia_smi()}  # fmt: skip
    record = {
        "date": now_iso(),
        "code": code_version(),
        "command": [sys.executable, *sys.argv],
        "budget_s": args.budget_s,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "pythonpath": env["PYTHONPATH"],
        "machine": machine,
        "probe": facts,
        "probe_rc": probe_rc,
        "wheels": wheel_info,
        "cuda": cuda,
    }
    if probe_rc:
        notes.append(f"the facts probe exited {probe_rc}: {tail(probe_out, 500)}")
    lines = write_report(out_dir, record, steps, notes)
    ran_on_gpu = [s.key for s in steps if s.gpu and s.status in ("ok", "failed", "timeout")]
    if args.record and cuda and ran_on_gpu:
        write_record(out_dir, record, facts, args.notes)
    shutil.rmtree(work, ignore_errors=True)
    if site:
        shutil.rmtree(site, ignore_errors=True)
    print()
    print("\n".join(lines) if lines else "no figures")
    for note in notes:
        print(f"note: {note}")
    failed = [s.key for s in steps if s.status in ("failed", "timeout")]
    print(f"report: {out_dir / 'gpu_check.txt'} and gpu_check.json; "
          f"{'failed: ' + ', '.join(failed) if failed else 'no step failed'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
