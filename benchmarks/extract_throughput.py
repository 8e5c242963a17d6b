"""Extraction throughput: seek-based middle frame against decode-everything, same clips.

Prints clips/s for both methods (and for the full per-clip extraction: frame + fbank),
single process, on either an existing UCF101-layout folder (--raw) or a freshly generated
embedded dataset whose video resembles UCF101's (320x240, 25 fps, 4-10 s).

    python benchmarks/extract_throughput.py                # UCF101-like synthetic clips
    python benchmarks/extract_throughput.py --raw data/raw/synthetic --limit 200

The figures go into a record under benchmarks/results/extract_throughput/
(benchmarks/record.py; `--no-record` skips it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import record as benchmark_record
import torch

from avfl.config import validate_config
from avfl.data import extract, synthetic, ucf101, video

UCF101_LIKE = {
    "seed": 0,
    "n_classes": 4,
    "n_silent_classes": 0,
    "n_audio_twins": 0,
    "n_groups": 25,
    "clips_per_group": [1, 1],
    "duration_s": [4.0, 10.0],
    "frame_width": 320,
    "frame_height": 240,
    "fps": 25,
    "gop": 12,
    "avi_fraction": 0.5,
    "n_corrupt": 0,
}


def clip_paths(raw: Path, limit: int) -> list[str]:
    _, clips = ucf101.read_layout(raw)
    paths = [str(ucf101.resolve_video(raw, c.rel_path)) for c in clips]
    usable = []
    for path in paths:
        try:
            video.middle_frame_seek(path)
            usable.append(path)
        except Exception:
            continue
        if len(usable) == limit:
            break
    return usable


def rate(fn, paths: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--raw", type=Path, help="UCF101-layout folder (default: generate UCF101-like clips)"
    )
    parser.add_argument("--limit", type=int, default=100, help="clips to time")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes")
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generated = None
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw
        if raw is None:
            settings = validate_config(
                {
                    "run_datasets": ["b"],
                    "datasets": {
                        "b": {"source": "synthetic", "synthetic": UCF101_LIKE, "extract": {}}
                    },
                }
            )["datasets"]["b"]["synthetic"]
            raw = Path(tmp)
            start = time.perf_counter()
            summary = synthetic.generate(settings, raw, workers=2, progress=False)
            generated = {"clips": summary["clips"], "seconds": round(time.perf_counter() - start, 3),
                         "settings": UCF101_LIKE, "workers": 2}  # fmt: skip
            print(
                f"generated {summary['clips']} UCF101-like clips (320x240, 25 fps, 4-10 s) in {time.perf_counter() - start:.1f} s"
            )
        paths = clip_paths(raw, args.limit)
        seek = rate(video.middle_frame_seek, paths, args.repeats)
        full = rate(video.middle_frame_decode_all, paths, args.repeats)
        settings = {
            "frame_size": 224,
            "audio_seconds": 5.0,
            "sample_rate": 16000,
            "num_mel_bins": 128,
            "target_frames": 512,
        }
        clip = rate(lambda p: extract.extract_clip(p, settings), paths, 1)
    print(f"clips timed: {len(paths)} (single process, best of {args.repeats})")
    print(f"middle frame, seek:             {seek:8.1f} clips/s")
    print(f"middle frame, decode-everything:{full:8.1f} clips/s")
    print(f"speed-up of seeking:            {seek / full:8.2f} x")
    print(f"full clip extraction (frame 224 + fbank 512x128): {clip:6.1f} clips/s per process")
    if args.record:
        figures = {
            "settings": {"raw": str(args.raw) if args.raw else None, "limit": args.limit,
                         "repeats": args.repeats, "threads": 1, "extraction": settings},
            "generated": generated,
            "clips_timed": len(paths),
            "seek_clips_per_s": round(seek, 3),
            "decode_all_clips_per_s": round(full, 3),
            "seek_speedup_x": round(seek / full, 4),
            "full_extraction_clips_per_s": round(clip, 3),
        }  # fmt: skip
        benchmark_record.write("extract_throughput", figures, notes=args.notes)


if __name__ == "__main__":
    main()
