"""Calibration of the rehearsal dataset: centralised linear-probe top-1 per fold, per modality.

Generates the rehearsal dataset (timed), then for each official split trains a multinomial
logistic regression on the fold's training clips (features standardised with their mean and
std) and reports test top-1 on audio, visual, and both concatenated. The defaults are meant
to give audio 45-60 % and visual 80-95 %, with audio+visual above visual.

    python benchmarks/rehearsal_probe.py [--settings '{"seed": 1}'] [--out DIR] [--l2 1e-3]
                                         [--no-record]

The figures go into a record under benchmarks/results/rehearsal_probe/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import record as benchmark_record

from avfl.data import rehearsal, ucf101
from avfl.data.manifest import read_manifest


def _relative(path: str, root: Path) -> str:
    """A generated file's path under the data folder (the folder itself is temporary)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default="{}", help="JSON overrides of DEFAULT_SETTINGS")
    parser.add_argument("--out", type=Path, help="where to write the data (default: a temp dir)")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=100)
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        started, cpu = time.perf_counter(), time.process_time()
        summary = rehearsal.generate_rehearsal(
            json.loads(args.settings), out / "features", out / "embeddings"
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"generated {summary['clips']} clips, {summary['classes']} classes, "
            f"{summary['groups']} groups in {wall:.2f} s wall, {cpu:.2f} s CPU"
        )
        for path, size in summary["files"].items():
            print(f"  {size:>11,d} B  {path}")
        figures: dict = {
            "settings": {"overrides": json.loads(args.settings), "l2": args.l2,
                         "max_iter": args.max_iter},
            "generation": {"clips": summary["clips"], "classes": summary["classes"],
                           "groups": summary["groups"], "wall_s": round(wall, 3),
                           "cpu_s": round(cpu, 3),
                           "files_bytes": {_relative(p, out): n for p, n in summary["files"].items()}},
            "chance_pct": round(100 / summary["classes"], 3),
            "folds": {},
        }  # fmt: skip
        rows = read_manifest(out / "features" / "manifest.tsv")
        labels = np.array([r.label for r in rows])
        visual = np.load(out / "embeddings" / "visual_resnet18.npy")
        print(f"\nlinear probe, test top-1 % (chance {100 / summary['classes']:.1f} %)")
        print("fold  train  test  audio  visual  audio+visual  probe s")
        for k in range(1, ucf101.N_SPLITS + 1):
            audio = np.load(out / "embeddings" / f"fold{k}" / "audio_ssast.npy")
            train = np.array([r.fold(k) == "train" for r in rows])
            started = time.perf_counter()
            top1 = [
                100
                * rehearsal.linear_probe(
                    x[train], labels[train], x[~train], labels[~train], args.l2, args.max_iter
                )
                for x in (audio, visual, np.concatenate([audio, visual], axis=1))
            ]
            probe_s = time.perf_counter() - started
            print(
                f"{k:>4}  {train.sum():>5}  {(~train).sum():>4}  {top1[0]:5.1f}  {top1[1]:6.1f}"
                f"  {top1[2]:12.1f}  {probe_s:7.1f}"
            )
            figures["folds"][str(k)] = {
                "train": int(train.sum()), "test": int((~train).sum()),
                "audio_pct": round(float(top1[0]), 3), "visual_pct": round(float(top1[1]), 3),
                "audio_visual_pct": round(float(top1[2]), 3), "probe_s": round(probe_s, 3),
            }  # fmt: skip
    if args.record:
        benchmark_record.write("rehearsal_probe", figures, notes=args.notes)


if __name__ == "__main__":
    main()
