"""Where a training job's time goes, at the paper's UCF101 shape (rehearsal features).

Trains one job of the rehearsal grid in this process, the way `python -m avfl train --job`
does, with timers around each stage of the code (no change to the package): start-up and
imports (a fresh interpreter importing the training code, measured separately), loading
(features, partition, model), the federated rounds, the dev evaluations, checkpoints, and the
test evaluation and record; the rest is writing the run's files. Two jobs, same method and
fold: one run alone (`runs_per_job: 1`, before batching) and one seed's runs at every rate
together (`runs_per_job: null`, the default since batching).

`--device cuda` trains both jobs on the GPU (`federated.device: cuda`, so the job asks for
one) and synchronises the device before every reading of the clock, so that a stage's time
includes the kernels it queued; CUDA's start-up in the job falls in "loading". There is no
fallback: without a usable CUDA device it stops with a one-line error.

    python benchmarks/run_breakdown.py [--method multifl] [--rounds 200] [--threads 1]
                                       [--device cpu|cuda] [--no-record]

The figures go into a record under benchmarks/results/run_breakdown/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record as benchmark_record
from grid_speed import jobs_for, prepare

STAGES = {  # stage -> (module, function) timed around every call
    "loading": [("avfl.train", "_load_fold"), ("avfl.train", "build_federated_data"),
                ("avfl.train", "build_model"), ("avfl.train", "_load_consumed")],
    "rounds": [("avfl.fl.engine", "_train_round")],
    "dev evaluation": [("avfl.fl.engine", "_evaluate")],
    "checkpoints": [("avfl.fl.engine", "_save_atomic")],
    "test evaluation + record": [("avfl.train", "_record")],
}  # fmt: skip


def startup_seconds() -> float:
    """A fresh interpreter importing what a training job imports (the best of three)."""
    code = "import torch, avfl.train, avfl.methods; avfl.methods.registry()"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def make_clock(cuda: bool):
    """perf_counter, read once the GPU has finished what was queued before (with `cuda`)."""
    if not cuda:
        return time.perf_counter
    import torch

    def clock() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return clock


def instrument(spent: dict[str, float], clock=time.perf_counter) -> None:
    """Wrap each stage's functions; a stage's time is the wall time during which at least one
    thread is inside it (a batched job's runs load and record in threads of their own)."""
    import importlib

    lock = threading.Lock()
    active: dict[str, int] = defaultdict(int)
    since: dict[str, float] = {}

    def enter(stage: str) -> None:
        now = clock()
        with lock:
            active[stage] += 1
            if active[stage] == 1:
                since[stage] = now

    def leave(stage: str) -> None:
        now = clock()
        with lock:
            active[stage] -= 1
            if active[stage] == 0:
                spent[stage] += now - since[stage]

    for stage, targets in STAGES.items():
        for module_name, name in targets:
            module = importlib.import_module(module_name)
            original = getattr(module, name)

            @functools.wraps(original)
            def timed(*args, _original=original, _stage=stage, **kwargs):
                enter(_stage)
                try:
                    return _original(*args, **kwargs)
                finally:
                    leave(_stage)

            setattr(module, name, timed)


def time_job(
    job_file: Path, threads: int, device: str = "cpu"
) -> tuple[int, float, dict[str, float]]:
    from avfl.jobspec import JobSpec
    from avfl.runtime import configure_training_process
    from avfl.train import run_job

    configure_training_process()  # as the `train` command does

    clock = make_clock(device == "cuda")
    spent: dict[str, float] = defaultdict(float)
    instrument(spent, clock)
    job = JobSpec.from_json(job_file.read_text())
    start = time.perf_counter()  # nothing is queued on a device yet
    run_job(job, log=lambda m: None, threads=threads)
    return len(job.runs), clock() - start, dict(spent)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="multifl")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:  # one job in a fresh process, so the two jobs do not share warm caches
        print(json.dumps(time_job(Path(args.worker), args.threads, args.device)))
        return
    on, gpu = "", None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"run_breakdown: --device cuda, but torch {torch.__version__} sees no "
                             "usable CUDA device (python -m avfl doctor says why)")  # fmt: skip
        gpu = torch.cuda.get_device_name(0)
        on = f", on {gpu} (synchronised timers)"
    rates = [round(0.1 * i, 1) for i in range(1, 10)]
    startup = startup_seconds()
    figures: dict = {
        "settings": {"method": args.method, "rounds": args.rounds, "threads": args.threads,
                     "device": args.device, "gpu": gpu, "dataset": "rehearsal", "fold": 1,
                     "seed": 0, "rates": rates, "clients": 100, "clients_per_round": 10},
        "startup_imports_s": round(startup, 4),
        "jobs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = prepare(root, args.rounds, rates, [0], args.device)
        config["experiment"]["methods"] = [args.method]
        print(f"{args.method}, rehearsal fold 1, seed 0, {args.rounds} rounds of 10 of 100 "
              f"clients, {args.threads} thread(s){on}; start-up + imports of a fresh process: "
              f"{startup:.2f} s")  # fmt: skip
        header = f"{'job':<28}{'runs':>5}{'wall s':>9}{'s/run':>8}  " + "  ".join(
            f"{s} s" for s in [*STAGES, "writing + other"]
        )
        print(header)
        for label, per_job in (("one run per job (before)", 1), ("a seed's rates (batched)", None)):
            files = [path for path, _ in jobs_for(config, per_job, root, f"w{per_job}")]
            worker = subprocess.run([sys.executable, __file__, "--worker", str(files[0]),
                                     "--threads", str(args.threads), "--device", args.device],
                                    capture_output=True, text=True)  # fmt: skip
            if worker.returncode:
                raise SystemExit(f"the {label!r} job failed:\n{worker.stderr[-3000:]}")
            runs, wall, spent = json.loads(worker.stdout.strip().splitlines()[-1])
            other = wall - sum(spent.values())
            figures["jobs"][label] = {
                "runs_per_job": per_job, "runs": runs, "wall_s": round(wall + startup, 4),
                "s_per_run": round((wall + startup) / runs, 4), "job_s": round(wall, 4),
                "stages_s": {s: round(spent.get(s, 0.0), 4) for s in STAGES},
                "writing_other_s": round(other, 4),
            }  # fmt: skip
            cells = [f"{spent.get(s, 0.0):.2f}" for s in STAGES] + [f"{other:.2f}"]
            print(f"{label:<28}{runs:>5}{wall + startup:>9.1f}{(wall + startup) / runs:>8.2f}  "
                  + "  ".join(f"{c:>{len(s) + 2}}" for c, s in zip(cells, [*STAGES, "writing + other"], strict=True)))  # fmt: skip
    if args.record:
        benchmark_record.write("run_breakdown", figures, notes=args.notes)


if __name__ == "__main__":
    main()
