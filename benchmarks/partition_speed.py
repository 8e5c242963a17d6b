"""Partition speed at the paper's UCF101 scale: 51 classes with audio, ~6,900 clips, N = 100, alpha = 0.1.

Builds a manifest of that size in memory (25 groups per class, 4-7 clips per group, as
UCF101), then times the partition (fold split, dev split, Dirichlet clients, missing-video
order) and its statistics for each official split.

    python benchmarks/partition_speed.py [--clients 100] [--alpha 0.1] [--min-size 2] [--no-record]

The figures go into a record under benchmarks/results/partition_speed/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import record as benchmark_record

from avfl import partition
from avfl.data import ucf101
from avfl.data.manifest import ManifestRow


def ucf101_sized_manifest(n_classes: int = 51, seed: int = 0) -> list[ManifestRow]:
    rng = np.random.default_rng(seed)
    rows: list[ManifestRow] = []
    for label in range(n_classes):
        for group in range(1, 26):
            for clip in range(1, int(rng.integers(4, 8)) + 1):
                folds = ["test" if group in ucf101.test_groups(k) else "train" for k in (1, 2, 3)]
                name = f"v_C{label:02d}_g{group:02d}_c{clip:02d}"
                path, cls = f"C{label:02d}/{name}.avi", f"C{label:02d}"
                audio = (7.0, True, True, 44100, 2, 498)
                rows.append(
                    ManifestRow(
                        name,
                        path,
                        cls,
                        label + 1,
                        label,
                        group,
                        *folds,
                        *audio,
                        "ok",
                        "",
                        len(rows),
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--min-size", type=int, default=2)
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    rows = ucf101_sized_manifest()
    settings = {
        "n_clients": args.clients,
        "alpha": args.alpha,
        "min_client_size": args.min_size,
        "dev_fraction": 0.1,
        "max_resample": 1000,
    }
    print(f"manifest: {len(rows)} clips, {len({r.label for r in rows})} classes")
    figures: dict = {
        "settings": settings,
        "manifest": {"clips": len(rows), "classes": len({r.label for r in rows})},
        "folds": {},
    }
    for fold in (1, 2, 3):
        start = time.perf_counter()
        record = partition.build_partition(
            rows, dataset="ucf101", fold=fold, seed=0, settings=settings
        )
        built = time.perf_counter() - start
        stats = partition.summarise_stats(partition.partition_stats(record, rows))
        total = time.perf_counter() - start
        print(
            f"fold {fold}: partition {built:.3f} s, with statistics {total:.3f} s; "
            f"{sum(map(len, record['clients']))} training clips in {len(record['clients'])} clients "
            f"({record['dirichlet_draws']} Dirichlet draws), dev {len(record['dev'])}, test {len(record['test'])}; "
            f"samples/client min {stats['samples']['min']:.0f} median {stats['samples']['median']:.0f} "
            f"max {stats['samples']['max']:.0f}; classes/client mean {stats['classes']['mean']:.1f}"
        )
        figures["folds"][str(fold)] = {
            "partition_s": round(built, 5),
            "with_statistics_s": round(total, 5),
            "training_clips": sum(map(len, record["clients"])),
            "clients": len(record["clients"]),
            "dirichlet_draws": record["dirichlet_draws"],
            "dev": len(record["dev"]),
            "test": len(record["test"]),
            "samples_per_client": {k: float(stats["samples"][k]) for k in ("min", "median", "max")},
            "classes_per_client_mean": round(float(stats["classes"]["mean"]), 4),
        }
    if args.record:
        benchmark_record.write("partition_speed", figures, notes=args.notes)


if __name__ == "__main__":
    main()
