"""Federated engine throughput at the paper's shape, against a straightforward loop.

Shape: 100 clients (Dirichlet alpha = 0.1 over ~4,500 UCF101-sized training clips, 51
classes), 10 clients per round, 1 local epoch, batch 16, frozen-mode inputs with the real
backbones' widths (SSAST 768-d audio, ResNet-18 512-d visual embeddings), MultiFL's mix
of tasks at r = 0.3.

- engine: this project's loop (`avfl.fl.engine.run_phase`): data as tensors on the device,
  clients as index tensors, the sampled clients of a round trained in lockstep (one vmapped
  step for all of them), streaming weighted aggregation; also timed with clients one at a
  time (`parallel: false`);
- baseline: the common way of writing it: per client a deep copy of the global model, a
  TensorDataset + DataLoader over its samples, all client state dicts kept, then averaged.

    python benchmarks/engine_speed.py [--rounds 20] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from avfl.fl.data import FederatedData
from avfl.fl.engine import Phase, TrainSettings, run_phase
from avfl.fl.tasks import AudioTask, AVTask
from avfl.models.heads import AVModel, group_of
from avfl.partition import audio_only_clients, dirichlet_clients


def make_data(device: torch.device, seed: int = 0) -> FederatedData:
    rng = np.random.default_rng(seed)
    n_train, n_eval, classes = 4500, 2300, 51
    labels = rng.integers(0, classes, n_train + n_eval)
    clients, _ = dirichlet_clients(labels[:n_train], 100, 0.1, 2, 1000, rng)
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(n_train + n_eval, 768, generator=gen)
    visual = torch.randn(n_train + n_eval, 512, generator=gen)
    order = rng.permutation(100).tolist()
    return FederatedData(
        audio=audio.to(device), visual=visual.to(device), labels=torch.from_numpy(labels).to(device),
        clients=[torch.from_numpy(c).to(device) for c in clients],
        dev=torch.arange(n_train, n_train + 500, device=device), test=torch.arange(n_train + 500, n_train + n_eval, device=device),
        n_classes=classes, class_names=[str(i) for i in range(classes)], audio_only=frozenset(audio_only_clients(order, 0.3)),
    )  # fmt: skip


def baseline(model: AVModel, data: FederatedData, rounds: int, cfg: TrainSettings) -> None:
    """Per-client deepcopy + DataLoader, all states kept, then averaged per parameter."""
    cpu = {k: v.cpu() for k, v in {"a": data.audio, "v": data.visual, "y": data.labels}.items()}
    device = data.audio.device
    global_model = model
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        states = []
        for client in rng.choice(len(data.clients), size=10, replace=False):
            task = AudioTask() if client in data.audio_only else AVTask()
            local = copy.deepcopy(global_model)
            idx = data.clients[client].cpu()
            loader = DataLoader(
                TensorDataset(cpu["a"][idx], cpu["v"][idx], cpu["y"][idx]),
                batch_size=cfg.batch_size,
                shuffle=True,
            )
            params = [p for n, p in local.named_parameters() if group_of(n) in task.groups]
            opt = torch.optim.Adam(params, lr=cfg.lr)
            local.train()
            for a, v, y in loader:
                loss = task.loss(local, a.to(device), v.to(device), y.to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append((len(idx), task.groups, copy.deepcopy(local.state_dict())))
        new = {}
        for name, value in global_model.state_dict().items():
            parts = [(n, s[name]) for n, groups, s in states if group_of(name) in groups]
            if parts:
                total = sum(n for n, _ in parts)
                new[name] = sum(s * (n / total) for n, s in parts)
            else:
                new[name] = value
        global_model.load_state_dict(new)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = make_data(device)
    cfg = TrainSettings(local_epochs=1, batch_size=16, lr=5e-4, optimizer="adam", weight_decay=0.0,
                        eval_every=10**6, selection="last", checkpoint_every=10**6, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = AVModel(768, 512, 51, hidden=128, dropout=0.1).to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    audio_only = data.audio_only
    phase = Phase(
        "bench",
        range(100),
        lambda c: AudioTask() if c in audio_only else AVTask(),
        args.rounds,
        10,
        "audio",
    )
    run_phase(phase, model, init, data, cfg, log=lambda m: None)  # warm-up
    engine_s = timed(lambda: run_phase(phase, model, init, data, cfg, log=lambda m: None))
    sequential = TrainSettings(**{**cfg.__dict__, "parallel": False})
    run_phase(phase, model, init, data, sequential, log=lambda m: None)
    sequential_s = timed(
        lambda: run_phase(phase, model, init, data, sequential, log=lambda m: None)
    )
    model.load_state_dict(init)
    baseline_s = timed(lambda: baseline(model, data, args.rounds, cfg))
    sizes = [c.numel() for c in data.clients]
    print(f"device {device}, torch threads {torch.get_num_threads()}; 100 clients ({min(sizes)}-{max(sizes)} clips), 10 per round, "
          f"{args.rounds} rounds, 30 audio-only clients")  # fmt: skip
    print(f"engine, clients in lockstep (vmap):          {args.rounds / engine_s:7.2f} rounds/s")
    print(
        f"engine, clients one at a time:               {args.rounds / sequential_s:7.2f} rounds/s"
    )
    print(f"baseline (deepcopy + DataLoader per client): {args.rounds / baseline_s:7.2f} rounds/s")
    print(f"speed-up of the engine over the baseline: {baseline_s / engine_s:.2f}x")


if __name__ == "__main__":
    main()
