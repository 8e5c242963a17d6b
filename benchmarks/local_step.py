"""Local training per (row, step): the written-out kernels (fl/stacked.py) against the
vmapped autograd path, at the paper's UCF101 shape.

Rows of the rehearsal's model (768-d audio, 512-d visual, hidden 128, 51 classes, dropout
0.1), clients of 48 clips (3 steps of 16, as a rehearsal client's median), Adam; each row
count trains `train_rows` a few times and keeps the best. Both paths run the same function
and the same optimizer; only the step differs.

`--groups G ...` also trains the written-out rows in groups of G rows, one `train_rows` call
per group, as a job would if it split a step's rows into cache-sized groups: a group of 4
audio-visual rows holds about 16 MB of parameters, gradients and Adam moments, half the
machine's 32 MB L3, where 90 rows hold 360 MB. It prints the time per (row, step) and
whether every row's trained state and loss equal those of all rows at once (they must: a
row's numbers do not depend on its company, fl/local.py).

`--device cuda` puts the data, the model and the rows' states on the GPU and synchronises
the device before every reading of the clock (kernels run asynchronously: without it a
timer measures the launches only). There is no fallback: without a usable CUDA device it
stops with a one-line error.

    python benchmarks/local_step.py [--rows 1 16 64 128] [--threads 1] [--groups 16 4 1]
                                    [--device cpu|cuda] [--no-record]

The figures go into a record under benchmarks/results/local_step/ (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import record as benchmark_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--groups", type=int, nargs="*", default=[],
                        help="also train the written-out rows in groups of this many rows")  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    benchmark_record.add_arguments(parser)
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"local_step: --device cuda, but torch {torch.__version__} sees no usable "
                         "CUDA device (python -m avfl doctor says why)")  # fmt: skip
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def clock() -> float:
        """The time, once the device has finished everything queued before it."""
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    from avfl.fl import local, stacked
    from avfl.fl.data import FederatedData
    from avfl.fl.tasks import AudioTask, AVTask
    from avfl.fl.types import TrainSettings
    from avfl.models.heads import AVModel
    from avfl.runtime import configure_training_process

    configure_training_process()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = 6800
    data = FederatedData(torch.randn(n, 768).to(device), torch.randn(n, 512).to(device),
                         torch.randint(0, 51, (n,)).to(device), [], torch.arange(1).to(device),
                         torch.arange(1).to(device), 51, [], frozenset())  # fmt: skip
    model = AVModel(768, 512, 51, 128, 0.1).to(device)
    state = model.state_dict()
    cfg = TrainSettings(local_epochs=1, batch_size=16, lr=5e-4, optimizer="adam",
                        weight_decay=0.0, eval_every=5, selection="best_dev", checkpoint_every=10)  # fmt: skip
    supports = stacked.supports
    gpu = torch.cuda.get_device_name(device) if cuda else None
    on = f", on {gpu} (synchronised timers)" if cuda else ""
    figures: dict = {
        "settings": {"rows": args.rows, "threads": args.threads, "repeats": args.repeats,
                     "groups": args.groups, "device": args.device, "gpu": gpu,
                     "clips_per_client": 48, "batch_size": 16, "steps_per_client": 3},
        "ms_per_row_step": {},
    }  # fmt: skip
    print(f"ms per (row, step), {args.threads} thread(s), best of {args.repeats}{on}")
    groups_head = "".join(f" {'groups of ' + str(g):>13}" for g in args.groups)
    print(f"{'task':<6} {'rows':>5} {'autograd (vmap)':>16} {'written out':>12} {'ratio':>6}"
          + groups_head)  # fmt: skip

    def best_time(train) -> tuple[float, list]:
        best, results = float("inf"), []
        for _ in range(args.repeats + 1):  # the first call warms up
            start = clock()
            results = train()
            best = min(best, clock() - start)
        return best, results

    def in_groups(task, rows, indices, size):
        """Rows 0..rows-1 in `train_rows` calls of `size` rows (size = rows: one call)."""
        results = []
        for first in range(0, rows, size):
            chosen = range(first, min(first + size, rows))
            results += local.train_rows(model, task, [state] * len(chosen),
                                        [indices[i] for i in chosen], list(chosen), data, cfg)  # fmt: skip
        return results

    for name, task in (("audio", AudioTask()), ("av", AVTask())):
        for rows in args.rows:
            indices = [torch.randint(0, n, (48,)).to(device) for _ in range(rows)]
            timings, together = {}, []
            for path in ("vmap", "stacked"):
                local.stacked.supports = supports if path == "stacked" else (lambda m: False)
                best, together = best_time(partial(in_groups, task, rows, indices, rows))
                timings[path] = best / rows / 3 * 1000
            local.stacked.supports = supports
            grouped = ""
            cell = {"vmap_ms": round(timings["vmap"], 4),
                    "written_out_ms": round(timings["stacked"], 4),
                    "ratio_x": round(timings["vmap"] / timings["stacked"], 4)}  # fmt: skip
            for size in args.groups:
                best, results = best_time(partial(in_groups, task, rows, indices, size))
                same = all(
                    a.loss == b.loss and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
                    for a, b in zip(together, results, strict=True)
                )
                grouped += f" {best / rows / 3 * 1000:>12.2f}{'' if same else '!'}"
                cell.setdefault("groups", {})[str(size)] = {
                    "ms": round(best / rows / 3 * 1000, 4), "same_as_one_call": same}  # fmt: skip
            figures["ms_per_row_step"].setdefault(name, {})[str(rows)] = cell
            print(f"{name:<6} {rows:>5} {timings['vmap']:>16.2f} {timings['stacked']:>12.2f} "
                  f"{timings['vmap'] / timings['stacked']:>5.2f}x" + grouped)  # fmt: skip
    if args.groups:
        print("(! after a figure: some row's state or loss differs from all rows at once)")
    if args.record:
        benchmark_record.write("local_step", figures, notes=args.notes)


if __name__ == "__main__":
    main()
