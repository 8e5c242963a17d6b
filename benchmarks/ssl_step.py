"""FSSUAVL's pre-training on a device: seconds per round of one run, per backbone and view size.

A federation shaped like the embedded data's (40 clients of 2-31 clips, 12 classes, fbank
(512, 128) with 65 % of the clips shorter than the 5 s window, 64x64 frames), half of the
clients audio-only (rate 0.5); one run's SimCLR phase (fl/contrastive.py) trains a few rounds
of 10 clients through the engine, as a job would, after one untimed round. Each setting reports seconds per round and
views per second, the loss of its first and last timed round (finite), and what a
run of the paper's 100 rounds, and the embedded grid's 36 runs, would take at that speed.

The settings: `small_cnn` at 32x32 with 1 local epoch (config/ssl.yaml), at 64x64 with 5
(the method's defaults), and `resnet18` at 128x128 with 5 (FSSUAVL's R-18 and image size; on a
GPU only, unless --resnet-on-cpu).

`--device cuda` synchronises before every reading of the clock; without a usable CUDA device
it stops with a one-line error (no fallback).

    python benchmarks/ssl_step.py [--device cpu|cuda] [--rounds 3] [--no-record]

The figures go into a record under benchmarks/results/ssl_step/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import record as benchmark_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SETTINGS = (
    ("small_cnn", 32, 1),
    ("small_cnn", 64, 5),
    ("resnet18", 128, 5),
)
GRID_RUNS = 36  # the embedded grid: 3 folds x 2 seeds x (5 FSSUAVL rates + 1 FASSL)


def federation(device):
    import numpy as np
    import torch

    from avfl.fl.data import FederatedData

    rng = np.random.default_rng(0)
    sizes = np.clip(rng.lognormal(2.4, 0.6, 40).astype(int), 2, 31)
    n = int(sizes.sum()) + 100
    valid = np.where(rng.random(n) < 0.65, rng.integers(150, 500, n), 512)
    fbank = torch.from_numpy(rng.normal(-6, 4, (n, 512, 128)).astype(np.float32))
    fbank[torch.arange(512)[None, :] >= torch.from_numpy(valid)[:, None]] = 0.0
    frames = torch.from_numpy(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 12, n))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    clients = [torch.arange(a, b, device=device) for a, b in itertools.pairwise(starts)]
    rest = torch.arange(int(starts[-1]), n, device=device)
    return FederatedData(
        fbank.to(device), frames.to(device), labels.to(device), clients, rest[:50], rest[50:],
        12, [str(i) for i in range(12)], frozenset(range(0, 40, 2)),
    )  # fmt: skip


def time_setting(data, backbone: str, size: int, epochs: int, rounds: int, device) -> dict:
    import torch

    from avfl.fl.contrastive import ContrastiveTask
    from avfl.fl.engine import NO_DEV, run_phase
    from avfl.fl.types import Phase, TrainSettings
    from avfl.models.ssl import SSLModel

    model = SSLModel(backbone, 12, size, 200, -6.0, 4.0, torch.Generator().manual_seed(0)).to(
        device
    )
    tasks = {
        True: ContrastiveTask(("audio",), 0.5),
        False: ContrastiveTask(("audio", "visual"), 0.5),
    }
    largest = max(int(c.numel()) for c in data.clients)
    cfg = TrainSettings(local_epochs=epochs, batch_size=largest, lr=0.03, optimizer="sgd",
                        weight_decay=1e-4, eval_every=1, selection="last", checkpoint_every=1000,
                        momentum=0.9)  # fmt: skip
    phase = Phase("simclr", range(40), lambda c: tasks[c in data.audio_only], rounds, 10, NO_DEV)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm = Phase("warm_up", range(40), phase.task_of, 1, 10, NO_DEV)  # first calls, allocations
    run_phase(warm, model, model.state_dict(), data, cfg, seed=1, log=lambda m: None)
    sync()
    tic = time.perf_counter()
    result = run_phase(phase, model, model.state_dict(), data, cfg, seed=0, log=lambda m: None)
    sync()
    seconds = (time.perf_counter() - tic) / rounds
    mean_size = float(sum(c.numel() for c in data.clients)) / len(data.clients)
    clips = mean_size * result.client_updates  # the clips of the clients trained, all rounds
    views = clips * epochs * (2 + 2 * 0.5)  # two audio views each; two frame views on half
    losses = [p["train_loss"] for p in result.dev_curve]
    return {"backbone": backbone, "image_size": size, "local_epochs": epochs,
            "s_per_round": round(seconds, 3), "views_per_s": round(views / rounds / seconds, 1),
            "loss_first": losses[0], "loss_last": losses[-1],
            "run_100_rounds_min": round(100 * seconds / 60, 2),
            "grid_36_runs_h": round(GRID_RUNS * 100 * seconds / 3600, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resnet-on-cpu", action="store_true")
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"ssl_step: --device cuda, but torch {torch.__version__} sees no usable "
                         "CUDA device")  # fmt: skip
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = federation(device)
    rows = []
    for backbone, size, epochs in SETTINGS:
        if backbone == "resnet18" and device.type == "cpu" and not args.resnet_on_cpu:
            continue
        row = time_setting(data, backbone, size, epochs, args.rounds, device)
        rows.append(row)
        print(f"{backbone:>10} {size:>4}px {epochs} ep: {row['s_per_round']:8.3f} s/round "
              f"{row['views_per_s']:9.1f} views/s  loss {row['loss_first']:.3f} -> "
              f"{row['loss_last']:.3f}  100 rounds {row['run_100_rounds_min']:.1f} min, "
              f"36 runs {row['grid_36_runs_h']:.2f} h", flush=True)  # fmt: skip
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    figures = {"settings": {"device": args.device, "gpu": gpu, "rounds": args.rounds,
                            "threads": args.threads}, "per_setting": rows}  # fmt: skip
    if args.record:
        benchmark_record.write("ssl_step", figures, notes=args.notes)


if __name__ == "__main__":
    main()
