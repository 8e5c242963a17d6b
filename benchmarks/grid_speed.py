"""A sub-grid of the paper's UCF101 setting, trained three ways, on the rehearsal features.

Sub-grid (defaults): fold 1, every registered method, missing rates 0.1 / 0.5 / 0.9, seeds
0-2, 50 rounds of 10 out of 100 clients (Dirichlet 0.1), 1 local epoch of batches of 16,
768-d audio and 512-d visual embeddings, 51 classes. Every way runs at most `--parallel`
processes at once (2: the cores of the machine), as Snakemake would:

- baseline: the common way of writing FL research code (FedMultimodal's and most others'):
  one process per run, and inside it, per client per round, a deep copy of the global
  model, a DataLoader over the client's samples and a fresh PyTorch Adam; the same methods,
  client sampling, aggregation and evaluation schedule as the engine;
- engine, one run per process: this project's engine with `runs_per_job: 1` (clients of a
  round in lockstep, data on the device, no per-client copies);
- engine, batched: every run of a method in one process (`runs_per_job: 0`): the runs'
  rounds in lockstep too.

    python benchmarks/grid_speed.py [--rounds 50] [--parallel 2] [--device cpu|cuda]
                                    [--kernels] [--json PATH]

Prints each way's wall time and, last, `speed-up over baseline: X.XXx` (batched).

`--kernels` runs the batched way once more under the PyTorch profiler. On the CPU it sums
the matrix products' and the optimizer's own time, and divides it by `--parallel` (the
processes run on that many cores): the floor no removal of overhead goes below. On CUDA it
sums the time of every GPU kernel (kineto's device events, as the profiler's own "Self CUDA
time total" counts them), and that sum is the floor as it stands: the processes share one GPU,
so their kernels add up. It also prints the GPU-busy fraction, kernel seconds over the
batched way's wall time (1 - that fraction: the share of wall the GPU waited on the hosts).

`--json PATH` writes every figure printed, with the command line and the machine (device,
torch, CPU model, cores, GPU, date, `git describe`), as one JSON object. Every run also writes
its record, the same figures, under benchmarks/results/grid_speed/ (benchmarks/record.py;
`--no-record` skips it).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import record as benchmark_record

REPO = Path(__file__).resolve().parents[1]


def peer_train_rows(model, tasks, starts, indices, seeds, data, cfg):
    """Local training as peer code writes it: deepcopy, DataLoader and Adam per client."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from avfl.fl.local import RowResult
    from avfl.models.heads import group_of

    tasks = list(tasks) if isinstance(tasks, list | tuple) else [tasks] * len(starts)
    results = []
    for task, start, idx, seed in zip(tasks, starts, indices, seeds, strict=True):
        local = copy.deepcopy(model)
        local.load_state_dict(start)
        cpu = idx.cpu()
        loader = DataLoader(TensorDataset(data.audio[cpu], data.visual[cpu], data.labels[cpu]),
                            batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
        for name, p in local.named_parameters():
            p.requires_grad_(group_of(name) in task.groups)
        params = [p for n, p in local.named_parameters() if group_of(n) in task.groups]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        global_params = {
            n: p.detach().clone() for n, p in local.named_parameters() if group_of(n) in task.groups
        }
        local.train()
        total, steps = 0.0, 0
        for _ in range(cfg.local_epochs):
            for audio, visual, labels in loader:
                loss = task.sample_loss(local, audio, visual, labels).mean()
                if hasattr(task, "penalty"):
                    loss = loss + task.penalty(
                        {n: p for n, p in local.named_parameters() if n in global_params},
                        global_params,
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, steps = total + float(loss), steps + 1
        state = {
            n: v.detach().clone()
            for n, v in local.state_dict().items()
            if group_of(n) in task.groups
        }
        results.append(RowResult(state, total / max(steps, 1), steps))
    return results


KERNELS = {  # the arithmetic of local training on a CPU: what no removal of overhead can remove
    "matrix products": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
    "optimizer": ("aten::_fused_adam_", "aten::_foreach_add_"),
}


def gpu_seconds(events) -> float:
    """The GPU's busy time in profiler events: the device events' own time, counted as the
    profiler's table counts "Self CUDA time total" (a CPU op's self device time repeats its
    kernels' time, so summing every event would count each kernel twice)."""
    from torch.autograd import DeviceType

    total = 0.0
    for e in events:
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
            total += e.self_device_time_total
        elif e.device_type == DeviceType.CPU and getattr(e, "is_legacy", False):
            total += e.self_device_time_total  # the legacy profiler keeps kernels in CPU events
    return total / 1e6


def run_profiled(job_file: str, out: str) -> None:
    """Train one batched job under the PyTorch profiler; write the kernels' own time (s):
    on the CPU the matrix products' and the optimizer's, on a GPU every kernel's."""
    from torch.profiler import ProfilerActivity, profile

    from avfl.device import asks_for_gpu

    spec = json.loads(Path(job_file).read_text())
    on_gpu = asks_for_gpu(spec["settings"]["federated"]["device"], spec["gpu"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        run_one(job_file, peer=False)
    events = prof.key_averages()
    if on_gpu:  # every kernel on the GPU: its busy time
        spent = {"GPU kernels": gpu_seconds(events)}
    else:
        spent = {
            kind: sum(e.self_cpu_time_total for e in events if e.key in names) / 1e6
            for kind, names in KERNELS.items()
        }
    Path(out).write_text(json.dumps(spent))


def run_one(job_file: str, peer: bool) -> None:
    """Inside a worker process: train one job (the baseline swaps in the peer-style trainer).

    Every way's processes start as `python -m avfl train` does, its process-wide settings
    included (avfl/runtime.py): the baseline gets the same process, only its trainer differs.
    """
    from avfl.runtime import configure_training_process

    configure_training_process()
    if peer:
        import avfl.fl.engine

        avfl.fl.engine.train_rows = peer_train_rows
    from avfl.jobspec import JobSpec
    from avfl.train import run_job

    run_job(JobSpec.from_json(Path(job_file).read_text()), log=lambda m: None, threads=1)


def prepare(root: Path, rounds: int, rates: list[float], seeds: list[int], device: str) -> dict:
    """Rehearsal features, partitions, and the plan of the sub-grid."""
    from avfl import partition
    from avfl.config import load_config
    from avfl.data.rehearsal import generate_rehearsal

    config = load_config([REPO / "config/config.yaml", REPO / "config/rehearsal.yaml"])
    config["data_dir"] = str(root / "data")
    config["federated"].update(rounds=rounds, device=device)
    config["experiment"].update(
        seeds=seeds, table1_rates=rates, figure3_rates=rates, figure2_rate=rates[0]
    )
    config["datasets"]["rehearsal"]["folds"] = [1]
    features = root / "data/features/rehearsal"
    generate_rehearsal({"extract": config["datasets"]["rehearsal"]["extract"]}, features,
                       root / "data/embeddings/rehearsal/default")  # fmt: skip
    for seed in seeds:
        out = root / f"results/rehearsal/partition/default/fold1_seed{seed}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        partition.write_partition(features / "manifest.tsv", out, dataset="rehearsal", fold=1, seed=seed,
                                  settings=config["partition"])  # fmt: skip
    return config


def jobs_for(config: dict, runs_per_job: int, root: Path, way: str) -> list[tuple[Path, set[str]]]:
    """Job files in the plan's order, each with the methods whose runs it consumes; no
    references."""
    from avfl.plan import Plan

    config = copy.deepcopy(config)
    config["experiment"]["runs_per_job"] = runs_per_job
    plan = Plan(config)
    jobs = []
    for job in plan.jobs:
        if job.method == "centralised":
            continue
        spec = json.loads(job.spec.to_json())
        device = spec["settings"]["federated"]["device"]
        if device in ("cpu", "cuda") and spec["gpu"] != (device == "cuda"):
            raise SystemExit(f"job {job.name}: device {device} but gpu {spec['gpu']} in its JSON")
        consumes = set()
        for run in spec["runs"]:
            run["out"] = str(root / way / run["out"])
            run["partition"] = str(root / run["partition"])
            consumes |= set(run["consumes"])
            run["consumes"] = {m: str(root / way / d) for m, d in run["consumes"].items()}
            run["reference"] = None
        path = root / "jobs" / way / f"{job.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec))
        jobs.append((path, consumes))
    return jobs


def time_way(
    jobs: list[tuple[Path, set[str]]], parallel: int, peer: bool, profile_dir: Path | None = None
) -> float:
    """Run the jobs as Snakemake would: at most `parallel` at once, in the plan's order, each
    as soon as every job of the methods it consumes has finished. With `profile_dir`, each
    job writes its kernels' time there (`run_profiled`)."""
    method_of = {path: json.loads(path.read_text())["method"] for path, _ in jobs}
    waiting = list(jobs)
    running: dict[Future, Path] = {}
    done: list[Path] = []

    def unfinished(method: str) -> bool:
        return any(method_of[p] == method and p not in done for p, _ in jobs)

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        while waiting or running:
            for item in list(waiting):
                path, consumes = item
                if len(running) < parallel and not any(unfinished(m) for m in consumes):
                    command = [sys.executable, __file__, "--worker", str(path)]
                    command += ["--peer"] if peer else []
                    if profile_dir is not None:
                        command += ["--profile", str(profile_dir / f"{path.stem}.json")]
                    future = pool.submit(subprocess.run, command, capture_output=True, text=True)
                    running[future] = path
                    waiting.remove(item)
            if not running:
                raise SystemExit("jobs wait on methods that no job trains")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                if result.returncode:
                    raise SystemExit(f"a worker failed:\n{result.stderr[-3000:]}")
                done.append(running.pop(future))
    return time.perf_counter() - start


def machine(device: str) -> dict:
    """What the figures were measured on (benchmarks/record.py), with the run's device, date
    and code version."""
    return {**benchmark_record.machine(use_torch=True), "device": device,
            "date": benchmark_record.now(), "git_describe": benchmark_record.code_version()}  # fmt: skip


def record_figures(record: dict) -> dict:
    """The figures of a --json record as a benchmark record holds them: the speed-ups as the
    lines print them ("speed-up over baseline" is the batched way's)."""
    figures = {key: record[key] for key in ("settings", "ways", "kernels") if key in record}
    names = {"batched": "speed_up_over_baseline_x", "engine": "engine_speed_up_over_baseline_x",
             "kernels_allow": "kernels_allow_x"}  # fmt: skip
    for key, value in record.get("speedups_over_baseline", {}).items():
        figures[names[key]] = value
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="processes at once (cores)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ways", nargs="+", default=["baseline", "engine", "batched"],
                        choices=["baseline", "engine", "batched"])  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kernels", action="store_true",
                        help="run the batched way once more under the profiler and print the "
                             "time of its kernels alone: the floor that removing overhead "
                             "cannot go below, and the speed-up that floor allows")  # fmt: skip
    parser.add_argument("--json", metavar="PATH",
                        help="also write every figure, the command and the machine as JSON")  # fmt: skip
    benchmark_record.add_arguments(parser)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.profile:
            run_profiled(args.worker, args.profile)
        else:
            run_one(args.worker, args.peer)
        return
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"grid_speed: --device cuda, but torch {torch.__version__} sees no "
                             "usable CUDA device (python -m avfl doctor says why)")  # fmt: skip
    record: dict = {"command": [sys.executable, *sys.argv],
                    "settings": {"rounds": args.rounds, "rates": args.rates, "seeds": args.seeds,
                                 "parallel": args.parallel, "device": args.device,
                                 "ways": args.ways, "kernels": args.kernels}}  # fmt: skip
    record["machine"] = machine(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = prepare(root, args.rounds, args.rates, args.seeds, args.device)
        n_runs = sum(
            len(j.runs)
            for j in __import__("avfl.plan").plan.Plan(config).jobs
            if j.method != "centralised"
        )
        record["settings"]["runs"] = n_runs
        print(f"sub-grid: fold 1, {n_runs} runs (every method x rates {args.rates} x seeds {args.seeds}), "
              f"{args.rounds} rounds, 100 clients, {args.parallel} processes at once, device {args.device}")  # fmt: skip
        times = {}
        record["ways"] = {}
        for way in args.ways:
            per_job = {"baseline": 1, "engine": 1, "batched": 0}[way]
            jobs = jobs_for(config, per_job, root, way)
            times[way] = time_way(jobs, args.parallel, peer=way == "baseline")
            record["ways"][way] = {"processes": len(jobs), "wall_s": round(times[way], 3),
                                   "s_per_run": round(times[way] / n_runs, 4)}  # fmt: skip
            print(f"{way:<9} {len(jobs):4d} processes  {times[way]:8.1f} s  "
                  f"({times[way] / n_runs:.2f} s per run)", flush=True)  # fmt: skip
        floor = None
        if args.kernels:
            profiles = root / "profiles"
            profiles.mkdir()
            profiled = time_way(
                jobs_for(config, 0, root, "profiled"), args.parallel, False, profiles
            )
            spent: dict[str, float] = {}
            for path in sorted(profiles.glob("*.json")):
                for kind, seconds in json.loads(path.read_text()).items():
                    spent[kind] = spent.get(kind, 0.0) + seconds
            kernels = {"seconds": {k: round(v, 3) for k, v in spent.items()},
                       "profiled_wall_s": round(profiled, 3)}  # fmt: skip
            if cuda:  # the processes share one GPU: their kernels add up, nothing divides them
                floor = sum(spent.values())
                print("batched, kernels alone: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items())
                      + f" of job time; on one GPU shared by {args.parallel} processes at least "
                      f"{floor:.1f} s")  # fmt: skip
                wall, of = (
                    (times["batched"], "batched") if "batched" in times else (profiled, "profiled")
                )
                busy = floor / wall if wall > 0 else None
                kernels |= {"floor_basis": "summed GPU kernel time (one GPU)",
                            "gpu_busy_fraction": round(busy, 4) if busy is not None else None,
                            "gpu_busy_of": f"{of} wall"}  # fmt: skip
                if busy is not None:
                    print(f"GPU busy: {floor:.1f} s of kernels in {wall:.1f} s of {of} wall: "
                          f"{busy:.1%} (host-bound share {1 - busy:.1%})")  # fmt: skip
            else:
                floor = sum(spent.values()) / args.parallel
                print("batched, kernels alone: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items())
                      + f" of job time; over {args.parallel} processes at least {floor:.1f} s")  # fmt: skip
                kernels["floor_basis"] = f"summed kernel time / {args.parallel} processes"
            kernels["floor_s"] = round(floor, 3)
            record["kernels"] = kernels
        speedups: dict[str, float] = {}
        if "baseline" in times:
            if floor:  # None without --kernels; 0 where the profiler saw no kernel
                speedups["kernels_allow"] = times["baseline"] / floor
                print(f"speed-up those kernels allow: {times['baseline'] / floor:.2f}x")
            for way in ("engine", "batched"):
                if way in times and way != "batched":
                    speedups[way] = times["baseline"] / times[way]
                    print(f"{way} speed-up over baseline: {times['baseline'] / times[way]:.2f}x")
            if "batched" in times:
                speedups["batched"] = times["baseline"] / times["batched"]
                print(f"speed-up over baseline: {times['baseline'] / times['batched']:.2f}x")
        record["speedups_over_baseline"] = {k: round(v, 3) for k, v in speedups.items()}
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    if args.record:
        benchmark_record.write("grid_speed", record_figures(record), notes=args.notes)


if __name__ == "__main__":
    main()
