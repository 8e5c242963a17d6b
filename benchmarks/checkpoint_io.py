"""What a checkpoint's checksum costs: saving and loading a BMSFed-sized checkpoint with and
without it, the way the training process does (no archive CRC, written to a temporary file,
flushed to disk and renamed; records.py).

The object stands in for a rehearsal BMSFed job's checkpoint: per run, a server whose update
store holds `--clients` rows of `--row` floats (100 x 200,000: 80 MB per store, about 163 MB
per run in the real one with its three stores). Default 10 runs, about 800 MB; a 27-run job's
checkpoint is 4.3 GB.

    python benchmarks/checkpoint_io.py [--runs 10] [--clients 100] [--row 200000] [--dir /tmp]
                                       [--no-record]

The figures go into a record under benchmarks/results/checkpoint_io/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record as benchmark_record
import torch

from avfl.records import fingerprint, save_torch, verify_checksum, with_checksum
from avfl.runtime import configure_training_process


def best_of(times: int, action) -> float:
    """The fastest of `times` calls (s): the machine's noise only ever adds."""
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        action()
        spent.append(time.perf_counter() - start)
    return min(spent)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--row", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    configure_training_process()
    generator = torch.Generator().manual_seed(0)
    checkpoint = {
        "format": 4,
        "server": [
            {"rows": torch.randn(args.clients, args.row, generator=generator)}
            for _ in range(args.runs)
        ],
    }
    size = sum(s["rows"].numel() * 4 for s in checkpoint["server"])
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "c.ckpt"
        digest = best_of(args.repeat, lambda: fingerprint(checkpoint))
        plain = best_of(args.repeat, lambda: save_torch(path, checkpoint))
        load_plain = best_of(args.repeat, lambda: torch.load(path, weights_only=False))
        checked = best_of(args.repeat, lambda: save_torch(path, with_checksum(checkpoint)))
        load_checked = best_of(
            args.repeat, lambda: verify_checksum(torch.load(path, weights_only=False))
        )
    print(
        f"checkpoint: {args.runs} runs x {args.clients} rows x {args.row} floats = {size / 1e9:.2f} GB"
    )
    print(f"fingerprint alone        {digest:6.2f} s  ({size / digest / 1e9:.2f} GB/s)")
    print(f"save, no checksum        {plain:6.2f} s")
    print(f"save, with checksum      {checked:6.2f} s  (+{checked - plain:.2f} s)")
    print(f"load, no checksum        {load_plain:6.2f} s")
    print(f"load and verify          {load_checked:6.2f} s  (+{load_checked - load_plain:.2f} s)")
    if args.record:
        figures = {
            "settings": {"runs": args.runs, "clients": args.clients, "row": args.row,
                         "repeat": args.repeat, "dir": args.dir},
            "size_gb": round(size / 1e9, 4),
            "fingerprint_s": round(digest, 4),
            "fingerprint_gb_per_s": round(size / digest / 1e9, 4),
            "save_no_checksum_s": round(plain, 4),
            "save_with_checksum_s": round(checked, 4),
            "save_checksum_cost_s": round(checked - plain, 4),
            "load_no_checksum_s": round(load_plain, 4),
            "load_and_verify_s": round(load_checked, 4),
            "load_checksum_cost_s": round(load_checked - load_plain, 4),
        }  # fmt: skip
        benchmark_record.write("checkpoint_io", figures, notes=args.notes)


if __name__ == "__main__":
    main()
