"""Benchmark records: every benchmark's figures as data, with what produced them.

Why: figures copied by hand into the README went stale, lost the machine they came from,
and could not be told apart from figures of other commits. Every benchmark script therefore
writes one JSON record per run, and the performance page and the README's headline figures
are generated from these records, so a figure on a page always comes with its command,
machine, date and code version, and is never older than its record says.

Where: `benchmarks/results/<benchmark>/<UTC timestamp>.json`, e.g.
`benchmarks/results/grid_speed/2026-12-03T11-42-25Z.json` (`AVFL_BENCHMARK_RECORDS=DIR`
writes under DIR instead). Measurements made before the scripts wrote records, taken over
from the README, are `<date>-history-<short name>.json` beside them.

A record is one JSON object (sorted keys, indent 1):

    benchmark     the script's name (`grid_speed`), or for a measurement no script takes, a
                  name of its own (`pipeline_embedded`, `grid_rehearsal`, ...)
    command       the command that produced the figures, shell-quoted, relative to the
                  repository root: `python benchmarks/grid_speed.py --ways baseline batched`
    figures       the numbers the script prints, structured: dicts keyed by way, row count,
                  fold, ...; times in seconds as floats unless a key's suffix says otherwise
                  (`_s`, `_ms`, `_min`, `_gb`, `_pct`, `_x` for a ratio)
    machine       cpu_model, cpu_count, usable_cores, cpu_flags (which of avx2, avx512f the
                  CPU has), gpu (its name, or null), torch, torch_cuda, python, platform; in
                  history records, `description` in the README's words
    date          when it was measured (a script's record: when the run ended), UTC, ISO 8601
    code_version  `avfl.code_version()`: package version + `git describe`, e.g.
                  `0.2.0+git.dd3b3ff-dirty`
    notes         free text (sizes chosen, caveats), or null
    source        history records only: "README measurement, recorded before benchmarks
                  wrote records"

Convention: a script run as a benchmark writes a record by default (`--record`);
`--no-record` skips it, and `--notes TEXT` puts TEXT in its notes. Worker modes (`--worker`,
the subprocesses a benchmark starts) never write one. `add_arguments(parser)` adds the three
options. A record's figures are the ones the script prints, so its printed output stays as it
was; `write` says on stderr where the record went.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HISTORY_SOURCE = "README measurement, recorded before benchmarks wrote records"
SHARED_MACHINE_NOTE = (
    "timings on a shared 2-core machine (another engineer may have run tests meanwhile) are "
    "indicative"
)
FLAGS = ("avx2", "avx512f")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--record` (the default) / `--no-record`: write this run's record or not."""
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the figures, the command, the machine, the date and the code version as "
        "a JSON record under benchmarks/results/<benchmark>/ (default: --record)",
    )
    parser.add_argument("--notes", help="text for the record's notes (sizes chosen, caveats)")


def _cpuinfo() -> tuple[str | None, list[str]]:
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or None, [f for f in FLAGS if f in flags]


def cpu_model() -> str | None:
    return _cpuinfo()[0]


def _gpu_name(torch_module) -> str | None:
    """The GPU's name: from torch where CUDA is usable, else from nvidia-smi where present."""
    if torch_module is not None:
        try:
            if torch_module.cuda.is_available():
                return torch_module.cuda.get_device_name(0)
        except Exception:
            pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        return ", ".join(names) if out.returncode == 0 and names else None
    return None


def machine(*, use_torch: bool = True) -> dict:
    """What the figures were measured on. `use_torch=False` leaves torch unimported (then
    torch and torch_cuda are null and the GPU comes from nvidia-smi)."""
    torch_module = None
    if use_torch:
        try:
            import torch as torch_module
        except Exception:
            torch_module = None
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_flags": flags,
        "gpu": _gpu_name(torch_module),
        "torch": getattr(torch_module, "__version__", None),
        "torch_cuda": torch_module.version.cuda if torch_module is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def code_version() -> str | None:
    """`avfl.code_version()`, importing avfl from src/ where it is not installed; `git
    describe` alone where avfl cannot be imported."""
    try:
        import avfl
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        try:
            import avfl
        except ImportError:
            avfl = None
        finally:
            sys.path.remove(str(REPO / "src"))
    if avfl is not None and hasattr(avfl, "code_version"):
        return avfl.code_version()
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"git.{out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else None


def command_line(argv: list[str] | None = None) -> str:
    """The command, shell-quoted, as typed at the repository root: `python`, then the script
    relative to the root and the arguments (absolute paths inside the repository made
    relative), without the record's own options (--record, --no-record, --notes). `argv` is
    sys.argv's shape; a leading interpreter is dropped."""
    argv = list(sys.argv if argv is None else argv)
    if argv and not argv[0].endswith(".py") and Path(argv[0]).name.startswith("python"):
        argv = argv[1:]

    def relative(arg: str, script: bool = False) -> str:
        path = Path(arg)
        if script or path.is_absolute():
            try:
                return str(path.resolve().relative_to(REPO))
            except (ValueError, OSError):
                return arg
        return arg

    kept, skip = [], False
    for arg in argv:  # the options of the record itself are no part of what made the figures
        if skip or arg in ("--record", "--no-record") or arg.startswith("--notes="):
            skip = False
            continue
        if arg == "--notes":
            skip = True
            continue
        kept.append(arg)
    parts = [relative(a, script=i == 0 and a.endswith(".py")) for i, a in enumerate(kept)]
    return shlex.join(["python", *parts])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def build(
    benchmark: str,
    figures: dict,
    *,
    argv: list[str] | None = None,
    notes: str | None = None,
    machine_info: dict | None = None,
    code: str | None = None,
    date: str | None = None,
) -> dict:
    """The record as a dict (see the module's docstring)."""
    return {
        "benchmark": benchmark,
        "command": command_line(argv),
        "figures": figures,
        "machine": machine_info if machine_info is not None else machine(),
        "date": date or now(),
        "code_version": code if code is not None else code_version(),
        "notes": notes,
    }


def dump(record: dict, path: Path) -> Path:
    """Write a record as records are written: sorted keys, indent 1, a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, sort_keys=True, indent=1, default=str) + "\n")
    return path


def results_dir() -> Path:
    return Path(os.environ.get("AVFL_BENCHMARK_RECORDS") or RESULTS)


def write(
    benchmark: str,
    figures: dict,
    *,
    argv: list[str] | None = None,
    notes: str | None = None,
    out: Path | None = None,
    machine_info: dict | None = None,
    code: str | None = None,
) -> Path:
    """Write `benchmarks/results/<benchmark>/<UTC timestamp>.json` (or that name under `out`)
    and return its path; `argv` defaults to sys.argv. Prints where it went."""
    record = build(benchmark, figures, argv=argv, notes=notes, machine_info=machine_info,
                   code=code)  # fmt: skip
    folder = Path(out) if out is not None else results_dir() / benchmark
    stamp = record["date"].replace(":", "-")
    path, n = folder / f"{stamp}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{stamp}-{n}.json"
    dump(record, path)
    try:
        shown = path.resolve().relative_to(REPO)
    except ValueError:
        shown = path
    print(f"record: {shown}", file=sys.stderr)
    return path
