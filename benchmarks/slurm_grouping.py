"""Wall time of the training stage through the SLURM profile, with and without job grouping.

Starts a throw-away single-node SLURM cluster on this machine (tests/slurm_cluster.py: needs
root and the Debian packages slurm-wlm and munge; 0 GPUs), writes a CPU-only config (the
tests' tiny synthetic dataset, parameter-free backbones, one fold, seeds 0-1, missing rates
0.1 / 0.5 / 0.9, `runs_per_job: 1`: 22 short training jobs) and prepares the data once,
locally (`snakemake all --until partition embed_audio embed_visual`). Each variant then runs
`snakemake all --workflow-profile workflow/profiles/slurm` in its own copy of that directory,
so only the training jobs and the report (collect, report) go through SLURM; it is timed from
start to end of the snakemake process. Variants:

- per-job: every training rule in a group of its own (`--groups train_...=train_...`): one
  sbatch job per training job, i.e. no grouping at all;
- profile: the profile as shipped. The train rules are in group `train`, and Snakemake puts
  every *connected* set of jobs of one group into one group job even without
  `--group-components`: a seed's training jobs are connected (every method's job reads the
  centralised reference's metrics.json of its fold and seed; modalitymirror also multifl's
  model), so this is one sbatch job per (fold, seed);
- grouped: `--group-components train=N` (`--group-size`, default 8): up to N such
  components per sbatch job.

The profile's settings are kept except those the tests override (tests/helpers.py and
tests/test_slurm.py: `--cores 2`, this cluster's partitions, `--max-threads 2`, `--jobs 4`,
`--slurm-init-seconds-before-status-checks 2`). A run that hangs (no output and no SLURM
job queued for `--stall` seconds) is stopped and reported as stalled: this benchmark found
that group jobs of 5 or more training jobs were never submitted while job-script names held
the group job's name (over 255 bytes); the profile's `jobname` and the plan's short rule
names fix that.

Prints, per variant, the wall time, the sbatch jobs submitted (counted from the executor's
"has been submitted with SLURM jobid" lines; training ones with the CPUs and memory SLURM
gave them), and whether every variant wrote the same results/report/<name>/table1.csv.

    .venv/bin/python benchmarks/slurm_grouping.py [--rounds 20] [--group-size 8] [--keep]
                                                  [--no-record]

The figures go into a record under benchmarks/results/slurm_grouping/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import record as benchmark_record
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import tiny_workflow_config  # noqa: E402
from tests.slurm_cluster import (  # noqa: E402
    Cluster,
    ClusterError,
    cluster_unavailable_reason,
    start_cluster,
)

VENV_BIN = Path(sys.executable).parent
PROFILE = REPO / "workflow/profiles/slurm"
VARIANTS = ("per-job", "profile", "grouped")
METHODS = ["unifl", "multifl", "harmony", "modalitymirror"]  # + the centralised reference
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")  # squeue's states of live jobs
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)?\.?$")


def write_config(path: Path, rounds: int) -> Path:
    """The tests' tiny dataset on CPU; one fold, 2 seeds, 3 rates, one run per job."""
    experiment = {"methods": METHODS, "table1_rates": [0.1, 0.5, 0.9], "runs_per_job": 1}
    config = tiny_workflow_config(path, seeds=(0, 1), experiment=experiment)
    data = yaml.safe_load(config.read_text())
    data["datasets"]["tiny"]["folds"] = [1]
    data["federated"].update(rounds=rounds, device="cpu")
    config.write_text(yaml.safe_dump(data))
    return config


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """snakemake on the repository's Snakefile, run in ``workdir`` (as tests/helpers.py)."""
    return [str(VENV_BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), *args]  # fmt: skip


def queue(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """The jobs squeue lists (finished ones for MinJobAge, 300 s): ID -> (state, CPUs/memory)."""
    r = cluster.run("squeue", "-h", "-t", "all", "-o", "%i %T %C %m", check=False, timeout=30)
    rows = (line.split() for line in r.stdout.splitlines())
    return {row[0]: (row[1], f"{row[2]} CPUs/{row[3]}") for row in rows if len(row) == 4}


def run_timed(
    command: list[str],
    env: dict[str, str],
    log: Path,
    timeout: float,
    cluster: Cluster | None = None,
    stall: float = 240,
) -> tuple[int, float, str, dict[str, str]]:
    """Run ``command`` (output to ``log``).

    Returns its exit status, wall time, a problem and the SLURM jobs seen meanwhile (ID ->
    CPUs/memory). The problem is '' or 'timed out', or 'stalled' when the log has not grown
    for ``stall`` seconds while ``cluster`` has no job queued or running (Snakemake waiting
    for a job that was never submitted). Then the command's process group is killed
    (Snakemake ignores SIGTERM there) and the cluster's jobs are cancelled.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    t0 = last_change = time.perf_counter()
    size, problem, seen, active = -1, "", {}, []
    while proc.poll() is None:
        time.sleep(2)
        now = time.perf_counter()
        if cluster is not None:
            jobs = queue(cluster)
            seen |= {i: shape for i, (_, shape) in jobs.items()}
            active = [i for i, (state, _) in jobs.items() if state in ACTIVE]
        if log.stat().st_size != size:
            size, last_change = log.stat().st_size, now
        elif cluster is not None and now - last_change > stall and not active:
            problem = f"stalled (no output for {stall:.0f} s, no SLURM job queued)"
        if now - t0 > timeout:
            problem = f"timed out after {timeout:.0f} s"
        if problem:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if cluster is not None and active:
                cluster.run("scancel", "--full", *active, check=False)
    if cluster is not None:
        seen |= {i: shape for i, (_, shape) in queue(cluster).items()}
    return proc.returncode, time.perf_counter() - t0, problem, seen


def training_rules(workdir: Path, config: Path, env: dict[str, str]) -> list[str]:
    """The training rules whose jobs are still to run in ``workdir`` (from a dry run)."""
    run = subprocess.run(
        snakemake_command(workdir, "--cores", "1", "-n", "all", "--configfile", str(config)),
        capture_output=True, text=True, env=env, check=True, timeout=300,
    )  # fmt: skip
    lines = run.stdout.splitlines()
    return sorted({line.split()[0] for line in lines if line.startswith("train_")})


def submitted(log: Path) -> dict[str, bool]:
    """SLURM job IDs the executor submitted (from its log lines): True for group jobs."""
    found = [SUBMITTED.search(line) for line in log.read_text(errors="replace").splitlines()]
    return {m.group(1): "/group_" in m.group(2) for m in found if m}


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=20, help="federated rounds per run")
    ap.add_argument("--group-size", type=int, default=8, help="N of --group-components train=N")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=4, help="snakemake --jobs (as the tests)")
    ap.add_argument(
        "--stall",
        type=float,
        default=240,
        help="seconds without output and without a queued SLURM job before a run counts as hung",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per snakemake run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    benchmark_record.add_arguments(ap)
    a = ap.parse_args(argv)

    reason = cluster_unavailable_reason()
    if reason:
        print(f"slurm_grouping: no local SLURM cluster possible here: {reason}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="avfl-slurm-grouping-"))
    cluster = None
    try:
        config = write_config(tmp / "config.yaml", a.rounds)
        base_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

        # Data, partitions and embeddings once, locally; each variant trains in a copy.
        base = tmp / "base"
        base.mkdir()
        until = ["--until", "partition", "embed_audio", "embed_visual"]
        prepare = snakemake_command(
            base, "--cores", "2", "all", "--configfile", str(config), *until
        )
        rc, wall, problem, _ = run_timed(prepare, base_env, tmp / "prepare.log", a.timeout)
        if rc != 0:
            print(f"data preparation failed (rc {rc}) {problem}:\n{tail(tmp / 'prepare.log')}")
            return 1
        rules = training_rules(base, config, base_env)
        figures: dict = {
            "settings": {"rounds": a.rounds, "group_size": a.group_size, "jobs": a.jobs,
                         "variants": a.variants, "stall_s": a.stall, "timeout_s": a.timeout,
                         "methods": METHODS, "seeds": [0, 1], "rates": [0.1, 0.5, 0.9],
                         "folds": [1], "runs_per_job": 1},
            "prepare_s": round(wall, 3),
            "training_jobs": len(rules),
            "variants": {},
        }  # fmt: skip
        print(f"prepared data locally in {wall:.1f} s; "
              f"{len(rules)} training jobs of {a.rounds} rounds each")  # fmt: skip

        try:
            cluster = start_cluster(tmp / "slurm", gpus=0)
        except ClusterError as e:
            print(f"slurm_grouping: cannot start the SLURM cluster: {e}", file=sys.stderr)
            return 2
        figures["cluster"] = {"nodes": 1, "cpus": cluster.cpus, "mem_mb": cluster.mem_mb}
        print(f"SLURM cluster: node {cluster.nodename}, {cluster.cpus} CPUs, "
              f"{cluster.mem_mb} MB, logs in {cluster.root / 'log'}")  # fmt: skip
        env = {**base_env, "SLURM_CONF": str(cluster.conf),
               "PATH": f"{cluster.bin_dir}{os.pathsep}{base_env['PATH']}"}  # fmt: skip
        partitions = tmp / "partitions.yaml"
        partitions.write_text(yaml.safe_dump(
            {"partitions": {"cpu": {"max_threads": cluster.cpus, "max_gpu": 0}}}))  # fmt: skip
        common = ["--cores", "2", "all", "--configfile", str(config),
                  "--workflow-profile", str(PROFILE),
                  "--slurm-partition-config", str(partitions),
                  "--slurm-init-seconds-before-status-checks", "2",
                  "--max-threads", "2", "--jobs", str(a.jobs)]  # fmt: skip
        extra = {
            "per-job": ["--groups", *(f"{r}={r}" for r in rules)],
            "profile": [],
            "grouped": ["--group-components", f"train={a.group_size}"],
        }

        results: dict[str, dict] = {}
        for variant in a.variants:
            work = tmp / variant
            shutil.copytree(base, work, symlinks=True)
            log = tmp / f"{variant}.log"
            command = snakemake_command(work, *common, *extra[variant])
            rc, wall, problem, seen = run_timed(command, env, log, a.timeout, cluster, a.stall)
            jobs = submitted(log)
            n_train = sum(jobs.values())
            sizes = Counter(seen.get(i, "?") for i, group in jobs.items() if group)
            table = work / "results/report/tiny/table1.csv"
            data = table.read_bytes() if table.exists() else None
            results[variant] = {"ok": rc == 0 and not problem, "wall": wall, "table": data}
            shape = ", ".join(f"{n} x {size}" for size, n in sorted(sizes.items()))
            figures["variants"][variant] = {
                "ok": results[variant]["ok"], "rc": rc, "problem": problem or None,
                "wall_s": round(wall, 3), "sbatch_training": n_train,
                "sbatch_other": len(jobs) - n_train,
                "training_allocations": {size: n for size, n in sorted(sizes.items())},
            }  # fmt: skip
            print(f"{variant:>8}: {wall:7.1f} s, rc {rc}{f', {problem}' if problem else ''}; "
                  f"sbatch jobs: {n_train} training ({shape or '?'}), "
                  f"{len(jobs) - n_train} other")  # fmt: skip
            if not results[variant]["ok"]:
                print(f"--- last lines of {log}:\n{tail(log)}\n---")

        tables = {v: r["table"] for v, r in results.items()}
        missing = [v for v, t in tables.items() if t is None]
        if missing:
            print(f"no table1.csv from: {', '.join(missing)}")
        identical = not missing and len(set(tables.values())) == 1
        print(f"table1.csv identical across {', '.join(tables)}: {identical}")
        figures["table1_identical"] = identical
        figures["table1_missing"] = missing
        ok = [v for v, r in results.items() if r["ok"]]
        if "per-job" in ok:
            ref = results["per-job"]["wall"]
            figures["speed_vs_per_job_x"] = {}
            for v in ok:
                print(f"{v:>8}: {results[v]['wall']:7.1f} s, "
                      f"{ref / results[v]['wall']:.2f}x the speed of per-job")  # fmt: skip
                figures["speed_vs_per_job_x"][v] = round(ref / results[v]["wall"], 4)
        if a.record:
            benchmark_record.write("slurm_grouping", figures, notes=a.notes,
                                   argv=None if argv is None else [sys.argv[0], *argv])  # fmt: skip
        return 0 if identical and len(ok) == len(results) else 1
    finally:
        if cluster is not None:
            cluster.stop()
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
