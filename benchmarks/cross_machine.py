"""Does Table 1 of the embedded pipeline depend on the CPU's vector kernels?

Runs the embedded pipeline (`snakemake --cores 2 all`, the default config) twice, one after
the other, each in a fresh clone of HEAD under a temporary folder, with this virtual
environment's snakemake (the folder of `sys.executable`):

- default: as is, with the kernels PyTorch and MKL pick for this CPU (AVX-512 where it has
  them);
- avx2: with `ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2`, the kernels an AVX2 machine computes
  with (PyTorch's dispatch and MKL's code path pinned to AVX2).

Then compares the two `results/report/embedded/table1.csv` cell by cell (a cell: one row,
keyed by dataset, metric, method, model, role and rate; its values mean, std, n_runs,
n_seeds, unhealthy) and prints: the cells and how many are identical, the 6 largest absolute
differences of the mean (method, rate, both means and stds), the largest difference relative
to the larger seed std of its cell, the cells whose run or health counts differ, and both
wall times. Uncommitted changes are not in the clones: commit first.

    python benchmarks/cross_machine.py [--cores 2] [--keep] [--no-record]
    python benchmarks/cross_machine.py --tables DEFAULT.csv AVX2.csv   # compare two tables only

It takes about 6 minutes of both cores of a 2-core machine. The record goes under
benchmarks/results/cross_machine/ (benchmarks/record.py); `--tables` only compares and
writes none.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record as benchmark_record

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TABLE = Path("results/report/embedded/table1.csv")
KEY = ("dataset", "metric", "method", "model", "role", "rate")
COUNTS = ("n_runs", "n_seeds", "unhealthy")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
TOP = 6


def read_table(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    with open(path, newline="") as f:
        return {tuple(row[k] for k in KEY): row for row in csv.DictReader(f)}


def _cell(key: tuple[str, ...]) -> dict:
    return dict(zip(KEY, key, strict=True))


def compare(default: Path, avx2: Path) -> dict:
    """The figures of two tables' comparison (see the module's docstring)."""
    a, b = read_table(default), read_table(avx2)
    shared = [k for k in a if k in b]
    identical = sum(1 for k in shared if a[k] == b[k])
    rows = []
    for k in shared:
        mean_a, mean_b = float(a[k]["mean"]), float(b[k]["mean"])
        std_a, std_b = float(a[k]["std"]), float(b[k]["std"])
        larger = max(std_a, std_b)
        diff = abs(mean_a - mean_b)
        rows.append({**_cell(k), "default_mean": mean_a, "avx2_mean": mean_b,
                     "default_std": std_a, "avx2_std": std_b,
                     "abs_difference": round(diff, 6), "larger_std": larger,
                     "difference_over_larger_std": round(diff / larger, 6) if larger > 0 else None})  # fmt: skip
    by_abs = sorted(rows, key=lambda r: (-r["abs_difference"], r["method"], r["rate"]))
    relative = [r for r in rows if r["difference_over_larger_std"] is not None]
    worst = max(relative, key=lambda r: r["difference_over_larger_std"], default=None)
    no_std = [r for r in rows if r["difference_over_larger_std"] is None and r["abs_difference"]]
    counts = [
        {**_cell(k), **{f"default_{c}": a[k][c] for c in COUNTS}, **{f"avx2_{c}": b[k][c] for c in COUNTS}}
        for k in shared
        if any(a[k][c] != b[k][c] for c in COUNTS)
    ]  # fmt: skip
    return {
        "cells": len(shared),
        "identical_cells": identical,
        "only_in_default": [_cell(k) for k in a if k not in b],
        "only_in_avx2": [_cell(k) for k in b if k not in a],
        "largest_abs_diff": by_abs[0]["abs_difference"] if by_abs else None,
        "largest_abs_differences": by_abs[:TOP],
        "largest_difference_over_larger_std": worst,
        "differing_cells_without_std": no_std,
        "count_differences": counts,
        "mean_abs_difference": round(sum(r["abs_difference"] for r in rows) / len(rows), 6)
        if rows
        else None,
    }


def print_comparison(figures: dict) -> None:
    print(f"cells: {figures['cells']}, identical: {figures['identical_cells']}"
          + (f"; only in default: {len(figures['only_in_default'])}, only in avx2: "
             f"{len(figures['only_in_avx2'])}" if figures["only_in_default"] or figures["only_in_avx2"] else ""))  # fmt: skip
    print(f"largest absolute differences of the mean (top {TOP}):")
    print(f"  {'method':<16} {'model':<14} {'rate':>5} {'default mean (std)':>20} "
          f"{'avx2 mean (std)':>20} {'|diff|':>8}")  # fmt: skip
    for r in figures["largest_abs_differences"]:
        print(f"  {r['method']:<16} {r['model']:<14} {r['rate']:>5} "
              f"{r['default_mean']:>11.4f} ({r['default_std']:.4f}) "
              f"{r['avx2_mean']:>11.4f} ({r['avx2_std']:.4f}) {r['abs_difference']:>8.4f}")  # fmt: skip
    w = figures["largest_difference_over_larger_std"]
    if w:
        print(f"largest difference over the larger seed std of its cell: "
              f"{w['difference_over_larger_std']:.3f} ({w['method']}, {w['model']}, rate "
              f"{w['rate'] or '-'}: {w['abs_difference']:.4f} against std {w['larger_std']:.4f})")  # fmt: skip
    for r in figures["differing_cells_without_std"]:
        print(f"differs where both stds are 0: {r['method']} {r['model']} rate {r['rate'] or '-'}")
    for r in figures["count_differences"]:
        print(f"run or health counts differ: {r['method']} {r['model']} rate {r['rate'] or '-'}: "
              + ", ".join(f"{c} {r['default_' + c]} / {r['avx2_' + c]}" for c in COUNTS))  # fmt: skip


def run_pipeline(clone: Path, cores: int, env: dict[str, str], log: Path) -> float:
    """`snakemake --cores N all` in `clone`; its wall time (s). Exits on failure."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([str(VENV_BIN / "snakemake"), "--cores", str(cores), "all"],
                              cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"snakemake failed in {clone} (rc {done.returncode}):\n{tail}")
    return wall


def clone_head(dest: Path) -> str:
    """A fresh clone of this repository's HEAD at `dest`; returns the commit."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", head], check=True)
    return head


def clone_version(clone: Path, env: dict[str, str]) -> str | None:
    """`avfl.code_version()` of the clone's code."""
    done = subprocess.run([sys.executable, "-c", "import avfl; print(avfl.code_version())"],
                          cwd=clone, env={**env, "PYTHONPATH": str(clone / "src")},
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        return None
    return done.stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--tables", nargs=2, type=Path, metavar=("DEFAULT", "AVX2"),
                        help="only compare two existing table1.csv files (no record)")  # fmt: skip
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    if args.tables:
        print_comparison(compare(*args.tables))
        return 0
    base = {k: v for k, v in os.environ.items() if k not in AVX2}
    base["PATH"] = os.pathsep.join(filter(None, (str(VENV_BIN), base.get("PATH"))))
    envs = {"default": base, "avx2": {**base, **AVX2}}
    tmp = Path(tempfile.mkdtemp(prefix="avfl-cross-machine-"))
    try:
        walls, code = {}, None
        for name, env in envs.items():
            clone = tmp / name
            head = clone_head(clone)
            code = code or clone_version(clone, env)
            print(f"{name}: snakemake --cores {args.cores} all in a clone of {head[:7]}"
                  + (f" with {' '.join(f'{k}={v}' for k, v in AVX2.items())}" if name == "avx2" else ""),
                  flush=True)  # fmt: skip
            walls[name] = run_pipeline(clone, args.cores, env, tmp / f"{name}.log")
            print(f"{name}: {walls[name]:.1f} s", flush=True)
        figures = compare(tmp / "default" / TABLE, tmp / "avx2" / TABLE)
        print_comparison(figures)
        print(f"wall: default {walls['default']:.1f} s, avx2 {walls['avx2']:.1f} s")
        figures = {
            "settings": {"config": "config/config.yaml (default)", "cores": args.cores,
                         "avx2_env": AVX2, "table": str(TABLE), "key": list(KEY)},
            **figures,
            "wall_s": {name: round(wall, 3) for name, wall in walls.items()},
        }  # fmt: skip
        if args.record:
            benchmark_record.write("cross_machine", figures, code=code,
                                   notes="; ".join(filter(None, [
                                       "the two runs one after the other; their wall times are "
                                       "indicative where the machine is shared", args.notes])))  # fmt: skip
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
