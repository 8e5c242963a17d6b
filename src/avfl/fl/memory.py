"""GPU memory of a round: how many rows of a lockstep bucket train at once, and a clear error
when even one does not fit.

A round holds, until its aggregation, the trained tensors of every client it has trained
(4 bytes per trained parameter per row: the rows of the optimizer's parameter buffer that
the client updates view), and, while a bucket trains, its rows' optimizer buffers:
parameters, gradients and, for Adam, both moments (16 bytes per trained parameter per row).
A first round that trains every client (BMSFed's round 0) or a job batching many runs can
ask for more than the GPU has. Such a bucket is trained in chunks that fit: a row's numbers
do not depend on the rows beside it (fl/local.py), so the results are the same. When even a
chunk of one row does not fit, the job stops with the numbers and the settings to lower,
instead of failing later with CUDA's out-of-memory error.

On the CPU nothing is chunked: its memory is the operating system's to manage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avfl.errors import UserError

USABLE_SHARE = 0.8  # of the free memory: activations and the allocator's slack need the rest


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None: not a GPU, no limit)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


@dataclass(frozen=True)
class RowBytes:
    """Bytes per row of a bucket."""

    training: int  # while it trains: its optimizer buffers (parameters included)
    held: int  # after it has trained, until aggregation: its trained parameters


def row_bytes(
    trained_parameters: int, element_size: int, adam: bool, momentum: bool = False
) -> RowBytes:
    """Parameters and gradients, plus Adam's two moments or SGD's momentum buffer; the
    parameters stay held."""
    buffers = 4 if adam else 3 if momentum else 2
    return RowBytes(trained_parameters * element_size * buffers,
                    trained_parameters * element_size)  # fmt: skip


def rows_per_chunk(rows: int, per_row: RowBytes, lockstep: bool, free: int | None,
                   held_before: int, where: str = "training") -> int:  # fmt: skip
    """How many of a bucket's `rows` to train at once: all of them when they fit in `free`
    bytes (None: no limit) beside the `held_before` bytes of rows trained earlier in the round.

    Lockstep rows train c at a time; the bucket's peak is then its last chunk's: the rows
    before it held, c rows training. The row-by-row path trains one at a time anyway, and
    every trained row stays held, so chunks cannot lower its peak.
    """
    if free is None or rows == 0:
        return rows
    budget = int(free * USABLE_SHARE) - held_before
    if lockstep:
        extra = per_row.training - per_row.held  # a training row's gradients and moments
        fits = (budget - rows * per_row.held) // max(extra, 1)
    else:
        fits = rows if (rows - 1) * per_row.held + per_row.training <= budget else 0
    if fits >= 1:
        return min(rows, int(fits))
    gib = 2**30
    peak = held_before + (rows - 1) * per_row.held + per_row.training
    raise UserError(
        f"{where}: not enough GPU memory for this round's {rows} client trainings. Training one "
        f"needs {per_row.training / gib:.2f} GiB (parameters, gradients, optimizer moments), and "
        f"every trained client's {per_row.held / gib:.2f} GiB stay until the round is "
        f"aggregated: {peak / gib:.2f} GiB with the {held_before / gib:.2f} GiB held already, "
        f"against {free * USABLE_SHARE / gib:.2f} GiB usable ({USABLE_SHARE:.0%} of the free "
        f"{free / gib:.2f} GiB). Lower experiment.runs_per_job (fewer runs per job share the "
        "GPU) or federated.clients_per_round, or use model.mode: frozen"
    )


def chunks(n: int, size: int) -> list[range]:
    """0..n-1 in consecutive ranges of at most `size`."""
    return [range(i, min(i + size, n)) for i in range(0, n, max(size, 1))]
