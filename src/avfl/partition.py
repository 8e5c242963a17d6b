"""Folds, dev split, Dirichlet label-skew clients and nested missing-video masks.

Every method reads the same partition file for a given (dataset, fold, partition seed),
so all of them see exactly the same clients and the same audio-only clients.

- Fold: an official train/test split from the manifest (UCF101 splits 1-3; ActivityNet's
  train/validation as train/test).
- Dev split: held out of the fold's training data for model selection. By group where the
  dataset has groups (UCF101: clips of one group never straddle dev and train), otherwise
  by clip, stratified by label.
- Clients: Dirichlet(alpha) label skew over N clients, as in FedMultimodal / FedML's
  "hetero" partition: for each class, proportions p ~ Dir(alpha 1_N) split that class's
  samples, with a client that already holds more than its even share (S/N) getting no more
  (keeps client sizes from exploding); redrawn until every client holds at least
  `min_client_size` samples, at most `max_resample` times.
- Missing video: a seeded permutation of the clients; at rate r the first round(rN) are
  audio-only. The audio-only set at a lower rate is thus a subset of the set at a higher
  rate, so curves over r compare like with like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfl import paths
from avfl.data.manifest import STATUS_OK, ManifestRow
from avfl.errors import UserError

# Rates stored explicitly in every partition file (any other rate follows from the order).
STORED_RATES = tuple(round(0.1 * k, 1) for k in range(11))
FORMAT_VERSION = 1


class PartitionError(UserError, ValueError):
    """The requested partition cannot be made; the message says which numbers to change."""


@dataclass(frozen=True)
class FoldSplit:
    train: list[ManifestRow]
    dev: list[ManifestRow]
    test: list[ManifestRow]


def fold_split(
    rows: Sequence[ManifestRow], fold: int, dev_fraction: float, rng: np.random.Generator
) -> FoldSplit:
    """Usable clips of one official fold, with a dev split held out of its training part."""
    usable = [r for r in rows if r.status == STATUS_OK]
    train = [r for r in usable if r.fold(fold) == "train"]
    test = [r for r in usable if r.fold(fold) == "test"]
    if not train or not test:
        raise PartitionError(
            f"fold {fold} has {len(train)} usable training and {len(test)} usable test clips; "
            f"check the dataset's split lists and the extraction summary"
        )
    if dev_fraction <= 0:
        return FoldSplit(train, [], test)
    groups = sorted({r.group for r in train})
    if len(groups) > 1 and all(g > 0 for g in groups):
        n_dev = max(1, math.floor(dev_fraction * len(groups) + 0.5))
        if n_dev >= len(groups):
            raise PartitionError(
                f"dev_fraction={dev_fraction} takes all {len(groups)} training groups of fold {fold}; lower it"
            )
        dev_groups = set(rng.choice(groups, size=n_dev, replace=False).tolist())
        dev = [r for r in train if r.group in dev_groups]
        kept = [r for r in train if r.group not in dev_groups]
        return FoldSplit(kept, dev, test)
    # No groups: stratified by label.
    dev_ids: set[str] = set()
    by_label: dict[int, list[str]] = {}
    for r in train:
        by_label.setdefault(r.label, []).append(r.clip_id)
    for label in sorted(by_label):
        ids = by_label[label]
        n_dev = math.floor(dev_fraction * len(ids) + 0.5)
        if n_dev:
            dev_ids.update(rng.choice(ids, size=min(n_dev, len(ids) - 1), replace=False).tolist())
    return FoldSplit(
        [r for r in train if r.clip_id not in dev_ids],
        [r for r in train if r.clip_id in dev_ids],
        test,
    )


def dirichlet_clients(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    min_size: int,
    max_resample: int,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], int]:
    """Indices of `labels` per client, and the number of draws it took."""
    n = len(labels)
    if n_clients * min_size > n:
        raise PartitionError(
            f"{n_clients} clients x min_client_size {min_size} = {n_clients * min_size} samples needed, "
            f"but the fold has only {n} training samples: lower partition.n_clients or partition.min_client_size"
        )
    classes = np.unique(labels)
    share = n / n_clients
    for attempt in range(1, max_resample + 1):
        buckets: list[list[int]] = [[] for _ in range(n_clients)]
        for k in classes:
            idx = np.flatnonzero(labels == k)
            rng.shuffle(idx)
            proportions = rng.dirichlet(np.full(n_clients, alpha))
            sizes = np.array([len(b) for b in buckets])
            proportions = proportions * (sizes < share)
            total = proportions.sum()
            proportions = proportions / total if total > 0 else np.full(n_clients, 1.0 / n_clients)
            cuts = (np.cumsum(proportions) * len(idx)).astype(int)[:-1]
            for bucket, part in zip(buckets, np.split(idx, cuts), strict=True):
                bucket.extend(part.tolist())
        if min(len(b) for b in buckets) >= min_size:
            return [np.sort(np.array(b, dtype=np.int64)) for b in buckets], attempt
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw in {max_resample} attempts gave all {n_clients} clients at least "
        f"{min_size} of the {n} training samples: raise partition.alpha or partition.max_resample, or lower "
        f"partition.n_clients or partition.min_client_size"
    )


def n_audio_only(n_clients: int, rate: float) -> int:
    """round(rate * N), halves rounded up (N_A = rN in the paper)."""
    if not 0.0 <= rate <= 1.0:
        raise PartitionError(f"video-missing rate {rate} is outside [0, 1]")
    return min(n_clients, math.floor(rate * n_clients + 0.5 + 1e-9))


def audio_only_clients(order: Sequence[int], rate: float) -> list[int]:
    """The audio-only clients at `rate`: a prefix of the seeded order, hence nested over rates."""
    return sorted(order[: n_audio_only(len(order), rate)])


def label_entropy(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of a client's label distribution."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # no "-0.0" for single-label clients


def client_label_counts(
    clients: Sequence[np.ndarray], labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """(clients, classes) matrix of sample counts."""
    return np.stack([np.bincount(labels[idx], minlength=n_classes) for idx in clients])


def rate_key(rate: float) -> str:
    return f"{rate:g}"


def build_partition(
    rows: Sequence[ManifestRow], *, dataset: str, fold: int, seed: int, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The partition record of one (dataset, fold, partition seed): pure function of its inputs."""
    split = fold_split(rows, fold, settings["dev_fraction"], np.random.default_rng([seed, fold, 1]))
    labels = np.array([r.label for r in split.train], dtype=np.int64)
    clients, attempts = dirichlet_clients(
        labels,
        settings["n_clients"],
        settings["alpha"],
        settings["min_client_size"],
        settings["max_resample"],
        np.random.default_rng([seed, fold, 2]),
    )
    order = np.random.default_rng([seed, fold, 3]).permutation(settings["n_clients"]).tolist()
    class_names = {r.label: r.class_name for r in rows if r.status == STATUS_OK}
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "fold": fold,
        "seed": seed,
        "settings": dict(settings),
        "classes": [class_names[k] for k in sorted(class_names)],
        "dirichlet_draws": attempts,
        "dev": [r.clip_id for r in split.dev],
        "test": [r.clip_id for r in split.test],
        "clients": [[split.train[i].clip_id for i in idx] for idx in clients],
        "audio_only_order": order,
        "audio_only": {rate_key(r): audio_only_clients(order, r) for r in STORED_RATES},
    }


def partition_labels(
    partition: Mapping[str, Any], rows: Sequence[ManifestRow]
) -> tuple[list[np.ndarray], int]:
    """Per-client label arrays of a partition record, and the number of classes."""
    label_of = {r.clip_id: r.label for r in rows}
    return [
        np.array([label_of[c] for c in client], dtype=np.int64) for client in partition["clients"]
    ], len(partition["classes"])


def partition_stats(
    partition: Mapping[str, Any], rows: Sequence[ManifestRow]
) -> list[dict[str, Any]]:
    """Per client: samples, classes present, label entropy, and the first rate at which it loses video."""
    client_labels, n_classes = partition_labels(partition, rows)
    order = partition["audio_only_order"]
    position = {client: i for i, client in enumerate(order)}
    n = len(order)
    stats = []
    for cid, labels in enumerate(client_labels):
        counts = np.bincount(labels, minlength=n_classes)
        # Audio-only at rate r iff position < round(rN): the smallest such stored rate.
        first = next((r for r in STORED_RATES if position[cid] < n_audio_only(n, r)), None)
        stats.append(
            {
                "client": cid,
                "samples": len(labels),
                "classes": int((counts > 0).sum()),
                "label_entropy_bits": round(label_entropy(counts), 4),
                "audio_only_from_rate": "" if first is None else rate_key(first),
            }
        )
    return stats


def summarise_stats(stats: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, min, median and max of the per-client statistics."""
    summary = {}
    for key in ("samples", "classes", "label_entropy_bits"):
        values = np.array([s[key] for s in stats], dtype=float)
        summary[key] = {
            "mean": round(float(values.mean()), 3),
            "min": round(float(values.min()), 3),
            "median": round(float(np.median(values)), 3),
            "max": round(float(values.max()), 3),
        }
    return summary


def write_partition(
    manifest: str | Path, out: str | Path, *, dataset: str, fold: int, seed: int,
    settings: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The partition stage: `out` (JSON), and beside it `<stem>_stats.tsv` (per client) and
    `<stem>_heatmap.png` (label distribution across clients)."""
    from avfl.data.manifest import read_manifest
    from avfl.records import write_json
    from avfl.report.partition_plot import plot_label_heatmap

    out = Path(out)
    rows = read_manifest(manifest)
    record = build_partition(rows, dataset=dataset, fold=fold, seed=seed, settings=settings)
    stats = partition_stats(record, rows)
    record["stats"] = summarise_stats(stats)
    write_json(out, record)
    stats_path, heatmap_path = paths.partition_companions(out)
    with open(stats_path, "w") as handle:
        handle.write("\t".join(stats[0]) + "\n")
        handle.writelines("\t".join(str(v) for v in row.values()) + "\n" for row in stats)
    client_labels, n_classes = partition_labels(record, rows)
    counts = np.stack([np.bincount(labels, minlength=n_classes) for labels in client_labels])
    title = f"{dataset}, fold {fold}, seed {seed}: Dirichlet alpha={settings['alpha']}"
    plot_label_heatmap(counts, record["classes"], title, heatmap_path)
    return record
