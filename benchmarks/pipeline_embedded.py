"""The README's first command, as a newcomer types it, on a fresh clone: how long it takes to
install and to run the embedded pipeline, how much memory its largest process takes, and
whether its Table 1 equals the documentation's snapshot (same machine kind only: numbers are
byte-identical on one machine and library build, not across them).

    python benchmarks/pipeline_embedded.py [--keep DIR]

The clone is of this repository's HEAD (uncommitted changes are not in it). The install part
is the command up to its last `&&`, run in the clone; the pipeline part is the rest. Both run
with the environment a new shell would give them.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import record

REPO = Path(__file__).resolve().parents[1]


def first_command() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    if block is None:
        raise SystemExit("README.md has no ```bash block")
    return block[1].strip().splitlines()[0]


def timed(command: str, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(
            f"`{command}` failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep", help="clone into this folder and keep it (default: a temporary one)"
    )
    record.add_arguments(parser)
    args = parser.parse_args()
    command = first_command()
    install, pipeline = command.rsplit(" && ", 1)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(args.keep) if args.keep else Path(tmp) / "avfl"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        install_s = timed(install, clone)
        pipeline_s = timed(pipeline, clone)
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        table = clone / "results/report/embedded/table1.md"
        snapshot = REPO / "docs/results/embedded/table1.md"
        same = table.exists() and snapshot.exists() and table.read_bytes() == snapshot.read_bytes()
    figures = {"install_s": round(install_s, 1), "snakemake_wall_s": round(pipeline_s, 1),
               "whole_line_wall_s": round(install_s + pipeline_s, 1),
               "largest_process_gb": round(peak_gb, 2), "table1_same_as_snapshot": same}  # fmt: skip
    print(f"install {install_s:.1f} s, pipeline {pipeline_s:.1f} s, largest process {peak_gb:.2f} GB, "
          f"Table 1 {'equals' if same else 'differs from'} docs/results/embedded/table1.md")  # fmt: skip
    if args.record:
        record.write("pipeline_embedded", figures,
                     notes=args.notes or f"the README's first command on a fresh clone: {command}")  # fmt: skip


if __name__ == "__main__":
    main()
