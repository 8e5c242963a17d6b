"""Local training per (row, step): the written-out kernels (fl/stacked.py) against the
vmapped autograd path, at the paper's UCF101 shape.

Rows of the rehearsal's model (768-d audio, 512-d visual, hidden 128, 51 classes, dropout
0.1), clients of 48 clips (3 steps of 16, as a rehearsal client's median), Adam; each row
count trains `train_rows` a few times and keeps the best. Both paths run the same function
and the same optimizer; only the step differs.

    python benchmarks/local_step.py [--rows 1 16 64 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

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
    data = FederatedData(torch.randn(n, 768), torch.randn(n, 512), torch.randint(0, 51, (n,)),
                         [], torch.arange(1), torch.arange(1), 51, [], frozenset())  # fmt: skip
    model = AVModel(768, 512, 51, 128, 0.1)
    state = model.state_dict()
    cfg = TrainSettings(local_epochs=1, batch_size=16, lr=5e-4, optimizer="adam",
                        weight_decay=0.0, eval_every=5, selection="best_dev", checkpoint_every=10)  # fmt: skip
    supports = stacked.supports
    print(f"ms per (row, step), {args.threads} thread(s), best of {args.repeats}")
    print(f"{'task':<6} {'rows':>5} {'autograd (vmap)':>16} {'written out':>12} {'ratio':>6}")
    for name, task in (("audio", AudioTask()), ("av", AVTask())):
        for rows in args.rows:
            indices = [torch.randint(0, n, (48,)) for _ in range(rows)]
            timings = {}
            for path in ("vmap", "stacked"):
                local.stacked.supports = supports if path == "stacked" else (lambda m: False)
                best = float("inf")
                for _ in range(args.repeats + 1):  # the first call warms up
                    start = time.perf_counter()
                    local.train_rows(
                        model, task, [state] * rows, indices, list(range(rows)), data, cfg
                    )
                    best = min(best, time.perf_counter() - start)
                timings[path] = best / rows / 3 * 1000
            local.stacked.supports = supports
            print(f"{name:<6} {rows:>5} {timings['vmap']:>16.2f} {timings['stacked']:>12.2f} "
                  f"{timings['vmap'] / timings['stacked']:>5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
