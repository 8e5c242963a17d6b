"""A throw-away single-node SLURM cluster on localhost, for tests.

Starts a private ``munged`` (own key and socket), ``slurmctld`` and ``slurmd``
from a generated ``slurm.conf``: one node with this machine's CPUs (nproc) and
memory (a bit below the total), partitions ``cpu`` (default) and ``gpu``, N
GPUs, select/cons_tres (so ``--gpus`` works), no accounting, no cgroups.
Everything lives under one directory; clients reach the cluster through
:attr:`Cluster.env` (``SLURM_CONF``, plus ``PATH`` with wrappers of the client
commands that set ``SLURM_CONF``: snakemake-executor-plugin-slurm strips
``SLURM_*`` from the environment of the ``srun`` it runs inside each job).

GPUs are fake device files (symlinks to /dev/null) so that SLURM gives each
job its own ``CUDA_VISIBLE_DEVICES``; Slurm 22.05 (Debian 12) drops GPUs
declared by count only ("file-less GPU") and marks the node INVAL.

Needs root and the Debian packages ``slurm-wlm`` and ``munge``. Stdlib only.

CLI::

    python tests/slurm_cluster.py start  [--dir D] [--gpus N]   # prints export lines
    python tests/slurm_cluster.py status [--dir D]
    python tests/slurm_cluster.py stop   [--dir D]
    eval "$(python tests/slurm_cluster.py start)"; sbatch --wrap hostname

pytest (see tests/test_slurm_smoke.py for the fixture)::

    reason = cluster_unavailable_reason()   # None, or why not (for pytest.skip)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"), gpus=2)
    subprocess.run(["sbatch", ...], env=cluster.client_env())
    cluster.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_DIR = Path(tempfile.gettempdir()) / "avfl-slurm"
STATE_FILE = "cluster.json"
CLUSTER_NAME = "avfltest"
DEFAULT_PARTITIONS = ("cpu", "gpu")
APT_PACKAGES = "slurm-wlm munge"
CLIENT_COMMANDS = (
    "sbatch",
    "srun",
    "salloc",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
    "sacct",
    "sacctmgr",
    "sshare",
)
REQUIRED_COMMANDS = (
    "munged",
    "slurmctld",
    "slurmd",
    "slurmstepd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
)
# RealMemory = MemTotal - this (slurmd drains a node with less memory than configured)
MEM_RESERVE_MB = 1024
# In the daemons' environment: the cluster's directory, the PID of the process
# that started it (0: the CLI, kept until `stop`), its munge key/socket dir.
ROOT_MARK = "AVFL_SLURM_ROOT"
OWNER_MARK = "AVFL_SLURM_OWNER"
MUNGE_MARK = "AVFL_SLURM_MUNGE_DIR"


class ClusterError(RuntimeError):
    """The cluster could not be started (the message says why)."""


@dataclasses.dataclass
class Cluster:
    """A started cluster: where it lives, how to reach it, its daemons' PIDs."""

    root: Path
    conf: Path
    nodename: str
    partitions: tuple[str, ...]
    cpus: int
    mem_mb: int
    gpus: int
    gpu_files: bool
    ctld_port: int
    slurmd_port: int
    munge_dir: Path
    pids: dict[str, int]
    scheduler_parameters: str = ""
    owner: int = 0

    @property
    def bin_dir(self) -> Path:
        """Wrappers of the client commands (srun, sbatch, ...) that set SLURM_CONF."""
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """Variables for clients (sbatch, squeue, snakemake --executor slurm): SLURM_CONF and PATH.

        PATH has :attr:`bin_dir` first: jobs inherit PATH (``--export=ALL``), and
        the executor plugin's job step removes SLURM_CONF before calling ``srun``
        inside the job, which then would look for /etc/slurm/slurm.conf.
        """
        return {
            "SLURM_CONF": str(self.conf),
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def client_env(self) -> dict[str, str]:
        """``os.environ`` updated with :attr:`env`, for subprocess calls."""
        return {**os.environ, **self.env}

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command (``sbatch``, ``squeue``...) against this cluster; text output captured."""
        return subprocess.run(
            list(args),
            env=self.client_env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def is_running(self) -> bool:
        """True while all three daemons are alive."""
        return bool(self.pids) and all(_alive(pid) for pid in self.pids.values())

    def stop(self) -> None:
        """Cancel the jobs, end the daemons and job processes, remove the munge dir."""
        stop_cluster(self.root, quiet=True)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(
            {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> Cluster:
        d = json.loads(text)
        for k in ("root", "conf", "munge_dir"):
            d[k] = Path(d[k])
        d["partitions"] = tuple(d["partitions"])
        return cls(**d)


# ---------------------------------------------------------------- checks


def cluster_unavailable_reason() -> str | None:
    """Why no cluster can be started here (for ``pytest.skip``), or None."""
    if not sys.platform.startswith("linux"):
        return "a local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (munged runs as user 'munge', slurmd as root)"
    missing = [c for c in REQUIRED_COMMANDS if not _which(c)]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}): apt-get install {APT_PACKAGES}"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no user 'munge' (is the munge package installed?)"
    return None


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin")


# ---------------------------------------------------------------- processes


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ancestors() -> set[int]:
    """This process and its ancestors (never killed, whatever their environment)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _environs() -> dict[int, dict[str, str]]:
    """The environment of every process we can read (empty for kernel threads)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            raw = (p / "environ").read_bytes()
        except OSError:
            continue
        env = {}
        for item in raw.split(b"\0"):
            k, sep, v = item.partition(b"=")
            if sep:
                env[k.decode(errors="replace")] = v.decode(errors="replace")
        out[int(p.name)] = env
    return out


def _cluster_procs(root: Path, environs: dict[int, dict[str, str]] | None = None) -> list[int]:
    """Processes of the cluster under ``root``: its daemons, slurmstepd and job processes."""
    conf, bin_dir = str(root / "slurm.conf"), str(root / "bin")
    keep = _ancestors()
    found = []
    for pid, env in (environs if environs is not None else _environs()).items():
        if pid in keep:
            continue
        daemon = env.get(ROOT_MARK) == str(root)  # slurmstepd inherits it from slurmd
        job = "SLURM_JOB_ID" in env and (
            env.get("SLURM_CONF") == conf or bin_dir in env.get("PATH", "").split(":")
        )
        if daemon or job:
            found.append(pid)
    return found


def _kill_and_wait(pids: list[int], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL what is left after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        live = [p for p in pids if _alive(p)]
        if not live:
            return
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in live):
            for p in live:  # reap our own children (when started by this process)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p, os.WNOHANG)
            time.sleep(0.1)


def _spawn(cmd: list[str], log: Path, env: dict[str, str], user: str | None = None) -> int:
    """Start a daemon in the foreground of its own session (outlives the CLI); returns its PID."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    return proc.pid


def _wait_for(
    what: str, ok: Callable[[], bool], pid: int, logs: list[Path], timeout: float
) -> None:
    """Poll ``ok()`` until true; raise with the logs' tails if ``pid`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ClusterError(f"{what} exited during start-up{_tails(logs)}")
        if ok():
            return
        time.sleep(0.2)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s{_tails(logs)}")


def _tails(logs: list[Path], n: int = 25) -> str:
    out = ""
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        out += f"\n--- last lines of {log}:\n" + ("\n".join(lines[-n:]) or "(empty)")
    return out


# ---------------------------------------------------------------- ports, machine


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pick_ports() -> tuple[int, int]:
    """SLURM's default ports 6817/6818 if free, else the first free pair from 16817 up."""
    for base in (6817, *range(16817, 17817, 2)):
        if _port_free(base) and _port_free(base + 1):
            return base, base + 1
    raise ClusterError("no free TCP port pair for slurmctld/slurmd")


def _nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("cannot read MemTotal from /proc/meminfo")


# ---------------------------------------------------------------- config


def slurm_conf(c: Cluster) -> str:
    """The slurm.conf text for cluster ``c``."""
    r = c.root
    flags = os.environ.get("SLURM_CLUSTER_DEBUGFLAGS")  # e.g. "Gres", to debug this module
    gres = f" Gres=gpu:{c.gpus}" if c.gpus else ""
    parts = "\n".join(
        f"PartitionName={p} Nodes={c.nodename} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
        for i, p in enumerate(c.partitions)
    )
    return f"""# generated by tests/slurm_cluster.py
ClusterName={CLUSTER_NAME}
SlurmctldHost={c.nodename}(127.0.0.1)
SlurmctldPort={c.ctld_port}
SlurmdPort={c.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={c.munge_dir / "munge.socket"}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "run" / "slurmctld.pid"}
SlurmdPidFile={r / "run" / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug={os.environ.get("SLURM_CLUSTER_DEBUG", "info")}
{f"DebugFlags={flags}" if flags else ""}
# no cgroups in containers: plain process tracking, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
{f"SchedulerParameters={c.scheduler_parameters}" if c.scheduler_parameters else ""}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
# the executor plugin's squeue status check needs finished jobs listed >= 120 s
MinJobAge=300
# reject at submission what no node can run (e.g. more CPUs than the node has), not pend forever
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={c.nodename} NodeAddr=127.0.0.1 CPUs={c.cpus} RealMemory={c.mem_mb}{gres} State=UNKNOWN
{parts}
"""


def gres_conf(c: Cluster) -> str:
    """The gres.conf text: fake device files (SLURM then sets CUDA_VISIBLE_DEVICES), or a bare count."""
    if not c.gpus:
        return "# no GPUs\n"
    if c.gpu_files:
        files = f"{c.root / 'dev'}/nvidia" + (f"[0-{c.gpus - 1}]" if c.gpus > 1 else "0")
        return f"AutoDetect=off\nNodeName={c.nodename} Name=gpu File={files}\n"
    return f"AutoDetect=off\nNodeName={c.nodename} Name=gpu Count={c.gpus}\n"


# ---------------------------------------------------------------- start / stop


def start_cluster(
    root: str | os.PathLike[str] = DEFAULT_DIR,
    gpus: int = 2,
    *,
    gpu_files: bool = True,
    partitions: tuple[str, ...] = DEFAULT_PARTITIONS,
    cpus: int | None = None,
    scheduler_parameters: str = "batch_sched_delay=0",
    owner: int | None = None,
    timeout: float = 60,
) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; return once the node is idle.

    ``gpus``: GPUs on the node. ``gpu_files`` (default): declared as fake device
    files ``root/dev/nvidiaN`` (symlinks to /dev/null), so each job gets its own
    CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS; otherwise by count only (Slurm 22.05
    rejects that: the node goes INVAL, "gres/gpu count reported lower than
    configured"). ``scheduler_parameters``: slurm.conf SchedulerParameters; the
    default starts batch jobs at once instead of after SLURM's 3 s
    batch_sched_delay, "" keeps SLURM's defaults. ``owner``: PID whose death
    makes the cluster stale (default: this process; 0: never); a later start
    ends stale clusters. A cluster already under ``root`` is stopped and
    ``root`` wiped first. Raises :class:`ClusterError` saying why it failed.
    """
    reason = cluster_unavailable_reason()
    if reason:
        raise ClusterError(reason)
    root = Path(root).resolve()
    reap_stale_clusters()
    stop_cluster(root, quiet=True)
    if root.exists():
        shutil.rmtree(root)
    for sub in ("state", "spool", "log", "run", "dev", "bin"):
        (root / sub).mkdir(parents=True)
    # munged (user munge) must reach its key and socket: pytest's tmp dirs are
    # 0700 root, so they go to a fresh dir under /tmp (sticky; short socket path)
    munge_dir = Path(tempfile.mkdtemp(prefix="munge-", dir="/tmp"))
    ctld_port, slurmd_port = _pick_ports()
    c = Cluster(
        root=root,
        conf=root / "slurm.conf",
        nodename=socket.gethostname().split(".")[0] or "localhost",
        partitions=tuple(partitions),
        cpus=cpus or _nproc(),
        mem_mb=max(_mem_total_mb() - MEM_RESERVE_MB, 512),
        gpus=gpus,
        gpu_files=gpu_files,
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        munge_dir=munge_dir,
        pids={},
        scheduler_parameters=scheduler_parameters,
        owner=os.getpid() if owner is None else owner,
    )
    for i in range(gpus if gpu_files else 0):  # slurmd wants character devices
        (root / "dev" / f"nvidia{i}").symlink_to("/dev/null")
    c.conf.write_text(slurm_conf(c))
    (root / "gres.conf").write_text(gres_conf(c))  # found next to slurm.conf
    _write_wrappers(c)
    _save(c)
    try:
        _start_munged(c, timeout)
        _start_slurm(c, timeout)
    except BaseException:
        stop_cluster(root, quiet=True)
        raise
    return c


def _write_wrappers(c: Cluster) -> None:
    for cmd in CLIENT_COMMANDS:
        real = _which(cmd)
        if real:
            w = c.bin_dir / cmd
            w.write_text(f'#!/bin/sh\nSLURM_CONF={c.conf} exec {real} "$@"\n')
            w.chmod(0o755)


def _daemon_env(c: Cluster) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "SLURM_CONF": str(c.conf),
        ROOT_MARK: str(c.root),
        OWNER_MARK: str(c.owner),
        MUNGE_MARK: str(c.munge_dir),
    }


def _start_munged(c: Cluster, timeout: float) -> None:
    munge = pwd.getpwnam("munge")
    key = c.munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    c.munge_dir.chmod(0o700)
    log = c.root / "log" / "munged.log"
    log.touch()
    for p in (c.munge_dir, key, log):
        os.chown(p, munge.pw_uid, munge.pw_gid)
    sock = c.munge_dir / "munge.socket"
    cmd = [
        _which("munged") or "munged", "--foreground", "--force",
        f"--socket={sock}", f"--key-file={key}", f"--log-file={log}",
        f"--pid-file={c.munge_dir / 'munged.pid'}", f"--seed-file={c.munge_dir / 'munged.seed'}",
    ]  # fmt: skip
    c.pids["munged"] = _spawn(cmd, log, _daemon_env(c), user="munge")
    _save(c)
    _wait_for("munged", sock.exists, c.pids["munged"], [log], timeout)


def _start_slurm(c: Cluster, timeout: float) -> None:
    logs = c.root / "log"
    ctld_logs = [logs / "slurmctld.out", logs / "slurmctld.log"]
    c.pids["slurmctld"] = _spawn(
        [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(c.conf)],
        ctld_logs[0],
        _daemon_env(c),
    )
    _save(c)
    _wait_for("slurmctld", lambda: _listening(c.ctld_port), c.pids["slurmctld"], ctld_logs, timeout)
    ping = lambda: "is UP" in c.run("scontrol", "ping", check=False, timeout=30).stdout  # noqa: E731
    _wait_for("slurmctld", ping, c.pids["slurmctld"], ctld_logs, timeout)
    slurmd_logs = [logs / "slurmd.out", logs / "slurmd.log"]
    c.pids["slurmd"] = _spawn(
        [_which("slurmd") or "slurmd", "-D", "-N", c.nodename, "-f", str(c.conf)],
        slurmd_logs[0],
        _daemon_env(c),
    )
    _save(c)
    _wait_for(
        "slurmd", lambda: _node_idle(c), c.pids["slurmd"], slurmd_logs + ctld_logs[1:], timeout
    )


def _node_idle(c: Cluster) -> bool:
    """True once the node is idle; raises if slurmctld refused it (drain/inval)."""
    state = node_state(c)
    if state in ("drain", "drng", "inval", "fail"):
        reason = c.run("sinfo", "-h", "-R", "-o", "%E", check=False, timeout=10).stdout.strip()
        raise ClusterError(
            f"slurmctld set node {c.nodename} to {state.upper()}: {reason or '(no reason)'}"
            f"{_tails([c.root / 'log' / 'slurmctld.log'], 10)}"
        )
    return state == "idle"


def node_state(c: Cluster) -> str:
    """The node's state as sinfo prints it (``idle``, ``mix``, ``alloc``, ``drain``...), '' if unknown."""
    r = c.run("sinfo", "-h", "-N", "-n", c.nodename, "-o", "%t", check=False, timeout=30)
    words = r.stdout.split()
    return words[0].rstrip("*~#!%$@^-") if r.returncode == 0 and words else ""


def _save(c: Cluster) -> None:
    (c.root / STATE_FILE).write_text(c.to_json())


def load_cluster(root: str | os.PathLike[str] = DEFAULT_DIR) -> Cluster | None:
    """The cluster recorded under ``root`` (running or not), or None."""
    try:
        return Cluster.from_json((Path(root).resolve() / STATE_FILE).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def stop_cluster(root: str | os.PathLike[str] = DEFAULT_DIR, quiet: bool = False) -> None:
    """Stop the cluster under ``root``: cancel its jobs, end its daemons and job processes.

    Also ends left-overs of an earlier cluster under ``root`` (found by their
    environment). Keeps ``root`` (logs); removes the munge dir. Idempotent.
    """
    root = Path(root).resolve()
    c = load_cluster(root)
    if c and c.is_running():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # scancel takes a single partition; name the jobs
            r = c.run("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i", check=False, timeout=30)
            if r.returncode != 0 or not r.stdout.split():
                break
            c.run("scancel", "--full", *r.stdout.split(), check=False, timeout=30)
            time.sleep(0.3)
    pids = c.pids if c else {}
    # slurmd, slurmctld (takes its slurmscriptd along), then whatever is left
    # (slurmstepd, job processes, daemons of an unrecorded start), munged last
    for name in ("slurmd", "slurmctld"):
        if name in pids:
            _kill_and_wait([pids[name]])
    munged = [p for p in [pids.get("munged")] if p]
    _kill_and_wait([p for p in _cluster_procs(root) if p not in munged], timeout=3)
    _kill_and_wait(munged + _cluster_procs(root), timeout=5)
    if c:
        if c.munge_dir.name.startswith("munge-"):
            shutil.rmtree(c.munge_dir, ignore_errors=True)
        if c.pids and root.exists():
            c.pids = {}
            _save(c)
    if not quiet:
        print(
            f"stopped cluster under {root}" if c else f"no cluster recorded under {root}",
            file=sys.stderr,
        )


def reap_stale_clusters() -> list[Path]:
    """Stop clusters whose owner process died (e.g. a killed pytest) or whose directory is gone."""
    environs = _environs()
    marks = {Path(e[ROOT_MARK]): e for e in environs.values() if ROOT_MARK in e}
    stale = []
    for root, env in marks.items():
        owner = env.get(OWNER_MARK, "0")
        gone = not (root / STATE_FILE).exists()
        orphan = owner.isdigit() and int(owner) > 0 and not _alive(int(owner))
        if gone:
            _kill_and_wait(_cluster_procs(root, environs), timeout=3)
            munge_dir = Path(env.get(MUNGE_MARK, "/nonexistent"))
            if munge_dir.name.startswith("munge-"):
                shutil.rmtree(munge_dir, ignore_errors=True)
        elif orphan:
            stop_cluster(root, quiet=True)
        if gone or orphan:
            stale.append(root)
    return stale


def status(root: str | os.PathLike[str] = DEFAULT_DIR) -> str:
    """Daemon PIDs, the export lines, sinfo and squeue."""
    c = load_cluster(root)
    if not c or not c.pids:
        return f"stopped (nothing running under {Path(root).resolve()})"
    live = {k: _alive(v) for k, v in c.pids.items()}
    lines = [
        "daemons: "
        + ", ".join(f"{k}={v} ({'up' if live[k] else 'DEAD'})" for k, v in c.pids.items())
    ]
    lines += [f"export SLURM_CONF={c.conf}", f'export PATH="{c.bin_dir}:$PATH"']
    if all(live.values()):
        lines.append(c.run("sinfo", check=False).stdout.rstrip())
        lines.append(c.run("squeue", check=False).stdout.rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``start`` | ``stop`` | ``status``; exit status 1 with the reason on stderr when start fails."""
    ap = argparse.ArgumentParser(
        description="A single-node SLURM cluster on localhost, for tests (needs root)."
    )
    ap.add_argument("action", choices=("start", "stop", "status"))
    ap.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"state, logs, config (default {DEFAULT_DIR})"
    )
    ap.add_argument("--gpus", type=int, default=2, help="GPUs of the node (default 2)")
    ap.add_argument(
        "--gpu-count-only",
        action="store_true",
        help="declare GPUs by count, no fake device files (Slurm 22.05 rejects it)",
    )
    ap.add_argument(
        "--partitions",
        default=",".join(DEFAULT_PARTITIONS),
        help="comma-separated, the first is default",
    )
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the node (default: nproc)")
    a = ap.parse_args(argv)
    try:
        if a.action == "start":
            c = start_cluster(
                a.dir,
                a.gpus,
                gpu_files=not a.gpu_count_only,
                partitions=tuple(a.partitions.split(",")),
                cpus=a.cpus,
                owner=0,
            )
            print(
                f"# SLURM up: node {c.nodename}, {c.cpus} CPUs, {c.mem_mb} MB, {c.gpus} GPUs, partitions "
                f"{','.join(c.partitions)}, ports {c.ctld_port}/{c.slurmd_port}; logs in {c.root / 'log'}",
                file=sys.stderr,
            )
            print(f"export SLURM_CONF={c.conf}")
            print(f'export PATH="{c.bin_dir}:$PATH"')
        elif a.action == "stop":
            stop_cluster(a.dir)
        else:
            print(status(a.dir))
    except ClusterError as e:
        print(f"slurm_cluster: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
