"""Memory-bounded rounds: a bucket that would not fit trains in chunks with the same numbers,
and a round where even one client does not fit stops with the numbers and what to lower."""

from __future__ import annotations

import pytest

from avfl.errors import UserError
from avfl.fl import memory
from avfl.train import run_job

from .conftest import quiet, tiny_job
from .test_train import stable

GIB = 2**30


def test_rows_per_chunk_fits_the_budget():
    per_row = memory.row_bytes(1_000_000, 4, adam=True)  # 16 MB training, 4 MB held
    assert (per_row.training, per_row.held) == (16_000_000, 4_000_000)
    assert memory.rows_per_chunk(50, per_row, True, None, 0) == 50  # the CPU: no limit
    assert memory.rows_per_chunk(50, per_row, True, 10 * GIB, 0) == 50
    # 1 GB usable of 1.25 GB free: 50 rows held take 200 MB, each training row 12 MB more.
    assert memory.rows_per_chunk(50, per_row, True, int(1.25e9), 0) == 50  # room for 66
    assert (
        memory.rows_per_chunk(200, per_row, True, int(1.25e9), 0) == 16
    )  # 200 MB left: 16 x 12 MB
    assert memory.rows_per_chunk(200, per_row, True, int(1.25e9), 100_000_000) == 8  # held earlier
    assert memory.rows_per_chunk(200, per_row, False, int(1.25e9), 0) == 200  # row by row: all
    assert [len(c) for c in memory.chunks(7, 3)] == [3, 3, 1]


def test_a_round_that_cannot_fit_one_client_names_the_numbers_and_the_settings():
    per_row = memory.row_bytes(98_000_000, 4, adam=True)  # SSAST-Base + ResNet-18, fine-tuned
    with pytest.raises(UserError) as error:
        memory.rows_per_chunk(100, per_row, False, 40 * GIB, 0, where="phase bmsfed, round 0")
    message = str(error.value)
    assert "phase bmsfed, round 0" in message and "100 client trainings" in message
    assert "1.46 GiB" in message and "0.37 GiB" in message  # one row training; one held
    assert "experiment.runs_per_job" in message and "clients_per_round" in message


def test_chunked_buckets_give_the_same_records(tiny_training, tmp_path, monkeypatch):
    def job(out):
        return tiny_job(tiny_training, tmp_path / out, "bmsfed", rates=(0.3, 0.7), seeds=(0, 1),
                        federated={"rounds": 4})  # fmt: skip

    whole = run_job(job("whole"), log=quiet)
    sizes: list[int] = []
    real = memory.rows_per_chunk

    def two_at_a_time(rows, *args, **kwargs):
        sizes.append(rows)
        return min(real(rows, *args, **kwargs), 2)

    monkeypatch.setattr(memory, "rows_per_chunk", two_at_a_time)
    chunked = run_job(job("chunked"), log=quiet)
    assert max(sizes) > 2  # buckets were split
    assert [stable(r) for r in chunked] == [stable(r) for r in whole]


def test_a_job_whose_round_does_not_fit_fails_before_training(tiny_training, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    with pytest.raises(UserError, match="not enough GPU memory"):
        run_job(tiny_job(tiny_training, tmp_path, "multifl"), log=quiet)
    assert not list(tmp_path.rglob("metrics.json"))
