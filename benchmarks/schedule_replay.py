"""Replays a finished grid's measured training-job times through a list scheduler: the grid's
wall time on other core counts, and what the order in which jobs start costs.

Reads the plan of the given config files and each training job's time from Snakemake's
benchmark files under `<workdir>/results/benchmarks/<dataset>/train/`, then schedules the
jobs on `--cores` one-core slots, a job starting once every job it waits for has finished
(the centralised references, MultiFL for ModalityMirror), in three orders: longest chain
first (the workflow's priorities, avfl.plan), BMSFed last (the worst case seen), and random
(the median of 200 shuffles). Estimates, not measurements: jobs that share a machine slow
each other, and the times were measured with two at once. Only training jobs are counted.

    python benchmarks/schedule_replay.py --workdir /path/to/finished/grid \\
        --configfile config/rehearsal.yaml [more.yaml] [--cores 2 4 8] [--no-record]

The figures (estimates) go into a record under benchmarks/results/schedule_replay/
(benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import record as benchmark_record

from avfl.config import load_config
from avfl.plan import Plan

REPO = Path(__file__).resolve().parents[1]


def makespan(
    times: dict[str, float], waits: dict[str, set[str]], cores: int, key: Callable[[str], object]
) -> float:
    """Wall time of a list schedule: whenever a slot is free, start the ready job first in `key`."""
    now, done, running, left = 0.0, set(), [], set(times)
    while left or running:
        ready = sorted((n for n in left if waits[n] <= done), key=key)
        while len(running) < cores and ready:
            name = ready.pop(0)
            left.remove(name)
            heapq.heappush(running, (now + times[name], name))
        now, name = heapq.heappop(running)
        done.add(name)
    return now


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a finished grid's working directory")
    parser.add_argument("--configfile", nargs="+", required=True)
    parser.add_argument("--cores", type=int, nargs="+", default=[2, 4, 8])
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    plan = Plan(load_config([REPO / "config/config.yaml", *args.configfile]))
    times = {}
    for job in plan.jobs:
        path = Path(args.workdir, "results/benchmarks", job.dataset, "train", f"{job.name}.tsv")
        if not path.exists():
            raise SystemExit(f"{path} not found: is {args.workdir} this config's finished grid?")
        times[job.name] = float(next(csv.DictReader(path.open(), delimiter="\t"))["s"])
    producer = {o: j.name for j in plan.jobs for r in j.runs for o in (r.metrics, r.model)}
    waits = {j.name: {producer[i] for i in j.inputs if i in producer} for j in plan.jobs}
    priority = {j.name: j.priority for j in plan.jobs}
    method = {j.name: j.method for j in plan.jobs}
    print(f"{len(times)} training jobs, {sum(times.values()):,.0f} s of job time")
    figures: dict = {
        "settings": {"workdir": args.workdir, "configfiles": args.configfile,
                     "cores": args.cores, "random_orders": 200},
        "training_jobs": len(times),
        "job_time_s": round(sum(times.values()), 3),
        "estimated_wall_s": {},
    }  # fmt: skip
    print("cores  longest chain first  BMSFed last  random order (median of 200)  job time / cores")
    for cores in args.cores:
        shuffled = []
        for seed in range(200):
            draw = random.Random(seed)
            order = {name: draw.random() for name in sorted(times)}
            shuffled.append(makespan(times, waits, cores, order.__getitem__))
        first = makespan(times, waits, cores, lambda n: (-priority[n], n))
        last = makespan(times, waits, cores, lambda n: (method[n] == "bmsfed", n))
        print(f"{cores:5d}  {first:17,.0f} s  {last:9,.0f} s  {statistics.median(shuffled):26,.0f} s"
              f"  {sum(times.values()) / cores:14,.0f} s")  # fmt: skip
        figures["estimated_wall_s"][str(cores)] = {
            "longest_chain_first": round(first, 3), "bmsfed_last": round(last, 3),
            "random_order_median": round(statistics.median(shuffled), 3),
            "job_time_over_cores": round(sum(times.values()) / cores, 3),
        }  # fmt: skip
    if args.record:
        benchmark_record.write("schedule_replay", figures,
                               notes="; ".join(filter(None, ["estimates from measured job times, not measurements", args.notes])))  # fmt: skip


if __name__ == "__main__":
    main()
