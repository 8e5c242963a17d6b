"""Partition properties: coverage, no leakage, minimum size, skew vs alpha, nesting, determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from avfl import partition
from avfl.data.manifest import ManifestRow, write_manifest

SETTINGS = {
    "n_clients": 10,
    "alpha": 0.1,
    "min_client_size": 2,
    "dev_fraction": 0.1,
    "max_resample": 1000,
    "seed": None,
}


def make_rows(
    n_classes: int, n_groups: int, clips_per_group: int, grouped: bool = True
) -> list[ManifestRow]:
    """A UCF101-like manifest: split 1 tests groups 1-7 (or every 4th clip without groups)."""
    rows = []
    for label in range(n_classes):
        for group in range(1, n_groups + 1):
            for clip in range(1, clips_per_group + 1):
                i = len(rows)
                is_test = group <= 7 if grouped else i % 4 == 0
                rows.append(
                    ManifestRow(
                        clip_id=f"v_C{label}_g{group:02d}_c{clip:02d}",
                        rel_path=f"C{label}/v_C{label}_g{group:02d}_c{clip:02d}.avi",
                        class_name=f"C{label}",
                        class_index=label + 1,
                        label=label,
                        group=group if grouped else 0,
                        fold1="test" if is_test else "train",
                        fold2="train",
                        fold3="train",
                        duration_s=5.0,
                        has_audio=True,
                        has_video=True,
                        sample_rate=16000,
                        channels=1,
                        audio_frames=498,
                        status="ok",
                        reason="",
                        row=i,
                    )
                )
    return rows


# --- Dirichlet clients --------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_classes=st.integers(1, 8),
    per_class=st.integers(1, 40),
    n_clients=st.integers(1, 25),
    alpha=st.floats(0.05, 50.0),
    min_size=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_dirichlet_covers_every_sample_once_and_respects_min_size(
    n_classes, per_class, n_clients, alpha, min_size, seed
):
    labels = np.repeat(np.arange(n_classes), per_class)
    rng = np.random.default_rng(seed)
    if n_clients * min_size > len(labels):
        with pytest.raises(partition.PartitionError, match=r"lower partition\.n_clients"):
            partition.dirichlet_clients(labels, n_clients, alpha, min_size, 50, rng)
        return
    try:
        clients, draws = partition.dirichlet_clients(labels, n_clients, alpha, min_size, 50, rng)
    except (
        partition.PartitionError
    ) as exc:  # a legitimately hard request: the message says what to change
        assert "raise partition.alpha" in str(exc)
        return
    assert len(clients) == n_clients and 1 <= draws <= 50
    merged = np.concatenate(clients)
    assert np.array_equal(np.sort(merged), np.arange(len(labels)))  # each sample exactly once
    assert min(len(c) for c in clients) >= min_size


def _mean_entropy(alpha: float, seed: int) -> float:
    labels = np.repeat(np.arange(5), 200)
    clients, _ = partition.dirichlet_clients(labels, 10, alpha, 1, 100, np.random.default_rng(seed))
    counts = partition.client_label_counts(clients, labels, 5)
    return float(np.mean([partition.label_entropy(c) for c in counts]))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_large_alpha_is_near_uniform_and_small_alpha_is_skewed(seed):
    uniform = np.log2(5)
    assert _mean_entropy(1000.0, seed) > 0.97 * uniform
    assert _mean_entropy(0.05, seed) < 0.6 * uniform


# --- the partition record ----------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_clients=st.integers(2, 20),
    alpha=st.sampled_from([0.1, 0.5, 5.0]),
    dev_fraction=st.sampled_from([0.0, 0.1, 0.3]),
    grouped=st.booleans(),
)
def test_partition_has_no_leakage(seed, n_clients, alpha, dev_fraction, grouped):
    rows = make_rows(n_classes=6, n_groups=25, clips_per_group=2, grouped=grouped)
    cfg = {**SETTINGS, "n_clients": n_clients, "alpha": alpha, "dev_fraction": dev_fraction}
    record = partition.build_partition(rows, dataset="d", fold=1, seed=seed, settings=cfg)
    train_pool = {r.clip_id for r in rows if r.fold1 == "train"}
    in_clients = [c for client in record["clients"] for c in client]
    dev, test = set(record["dev"]), set(record["test"])
    assert len(in_clients) == len(set(in_clients))  # no sample in two clients
    assert set(in_clients) | dev == train_pool  # every training sample: a client or dev
    assert not (set(in_clients) & dev) and not (set(in_clients) & test) and not (dev & test)
    assert test == {r.clip_id for r in rows if r.fold1 == "test"}
    assert min(len(c) for c in record["clients"]) >= cfg["min_client_size"]
    if dev_fraction > 0:
        assert dev
    if grouped and dev:
        group_of = {r.clip_id: r.group for r in rows}
        assert {group_of[c] for c in dev}.isdisjoint(
            {group_of[c] for c in in_clients}
        )  # no straddling


@settings(max_examples=40, deadline=None)
@given(
    n_clients=st.integers(1, 200),
    seed=st.integers(0, 2**31),
    r1=st.floats(0, 1),
    r2=st.floats(0, 1),
)
def test_audio_only_sets_are_nested_over_rates(n_clients, seed, r1, r2):
    assume(r1 <= r2)
    order = np.random.default_rng(seed).permutation(n_clients).tolist()
    low, high = partition.audio_only_clients(order, r1), partition.audio_only_clients(order, r2)
    assert set(low) <= set(high)
    assert len(low) == partition.n_audio_only(n_clients, r1)
    assert len(high) == np.floor(r2 * n_clients + 0.5 + 1e-9)


def test_audio_only_count_is_rounded_rn():
    assert partition.n_audio_only(100, 0.3) == 30
    assert partition.n_audio_only(10, 0.25) == 3  # halves round up
    assert partition.n_audio_only(20, 0.0) == 0 and partition.n_audio_only(20, 1.0) == 20


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_outside_unit_interval_is_rejected(rate):
    with pytest.raises(partition.PartitionError, match=r"outside \[0, 1\]"):
        partition.n_audio_only(10, rate)


def test_more_clients_than_samples_is_rejected_with_the_numbers():
    rows = make_rows(n_classes=2, n_groups=25, clips_per_group=1)
    with pytest.raises(
        partition.PartitionError, match=r"500 clients .* only 3[0-9] training samples"
    ):
        partition.build_partition(
            rows,
            dataset="d",
            fold=1,
            seed=0,
            settings={**SETTINGS, "n_clients": 500, "min_client_size": 1},
        )


def test_stored_rates_match_the_order():
    rows = make_rows(n_classes=4, n_groups=25, clips_per_group=2)
    record = partition.build_partition(rows, dataset="d", fold=1, seed=3, settings=SETTINGS)
    for key, clients in record["audio_only"].items():
        assert clients == partition.audio_only_clients(record["audio_only_order"], float(key))
    stats = partition.partition_stats(record, rows)
    assert [s["samples"] for s in stats] == [len(c) for c in record["clients"]]
    assert sum(s["audio_only_from_rate"] == "0.1" for s in stats) == 1  # round(0.1 * 10)


def test_other_seed_gives_other_clients_same_seed_same_clients():
    rows = make_rows(n_classes=4, n_groups=25, clips_per_group=2)
    a = partition.build_partition(rows, dataset="d", fold=1, seed=1, settings=SETTINGS)
    b = partition.build_partition(rows, dataset="d", fold=1, seed=1, settings=SETTINGS)
    c = partition.build_partition(rows, dataset="d", fold=1, seed=2, settings=SETTINGS)
    assert a == b and a["clients"] != c["clients"]


@pytest.mark.slow
def test_cli_writes_identical_bytes_for_the_same_seed(tmp_path: Path):
    rows = make_rows(n_classes=5, n_groups=25, clips_per_group=2)
    write_manifest(tmp_path / "manifest.tsv", rows)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        cmd = [
            sys.executable, "-m", "avfl", "partition", "--manifest", str(tmp_path / "manifest.tsv"),
            "--dataset", "d", "--fold", "1", "--seed", "4", "--settings", json.dumps(SETTINGS),
            "--out", str(out / "p.json"),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        digests.append(
            [
                hashlib.sha256((out / f).read_bytes()).hexdigest()
                for f in ("p.json", "p_stats.tsv", "p_heatmap.png")
            ]
        )
    assert digests[0] == digests[1]
    record = json.loads((tmp_path / "a/p.json").read_text())
    assert record["stats"]["samples"]["min"] >= SETTINGS["min_client_size"]


@pytest.mark.slow
def test_cli_reports_impossible_request(tmp_path: Path):
    write_manifest(
        tmp_path / "manifest.tsv", make_rows(n_classes=2, n_groups=25, clips_per_group=1)
    )
    cmd = [
        sys.executable, "-m", "avfl", "partition", "--manifest", str(tmp_path / "manifest.tsv"),
        "--dataset", "d", "--fold", "1", "--seed", "0", "--settings", json.dumps({**SETTINGS, "n_clients": 100}),
        "--out", str(tmp_path / "p.json"),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert (
        run.returncode == 2
        and "lower partition.n_clients" in run.stderr
        and "Traceback" not in run.stderr
    )
    assert not (tmp_path / "p.json").exists()
