"""Process-wide settings of a training process, made once by its entry point.

They change how the process allocates memory and writes files, never a number it computes,
and they would outlive a caller's own use of the process, so a library call never makes
them: `python -m avfl train` does (and the benchmarks, to time what it runs).
"""

from __future__ import annotations


def configure_training_process() -> None:
    """Keep freed memory in the heap (allocator.py), and save without the archive's CRC-32.

    Computing the CRC-32 of every record was most of the time of writing BMSFed's update
    stores (benchmarks/checkpoint_io.py measures it). Checkpoints are
    written to a temporary file, flushed to disk and renamed (engine._save_atomic), so a write
    cut short never replaces the previous one, and a checkpoint damaged afterwards that cannot
    be read is set aside (engine._load_checkpoint). The CRC would add nothing on reading:
    torch.load (2.14) does not check it, and a byte flipped inside a tensor loads silently
    with or without it (tried). Checkpoints and model files carry their own SHA-256 of their
    contents instead, checked on loading (records.fingerprint).
    """
    from torch.utils.serialization import config

    from avfl import allocator

    allocator.retain_freed_memory()
    config.save.compute_crc32 = False
