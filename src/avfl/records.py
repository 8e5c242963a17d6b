"""Writing result records: sorted keys, atomic replace, so a killed job never leaves half a file;
checksums inside saved models and checkpoints, so a file damaged on disk is never trusted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def replace_durably(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file, flush it to disk, then rename it over `path`: a killed
    job, or a machine that loses power, leaves either the previous file or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    replace_durably(
        path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    )


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save, replaced durably (models and checkpoints)."""
    import torch

    replace_durably(path, lambda tmp: torch.save(obj, tmp))


CHECKSUM_KEY = "sha256"


def fingerprint(obj: Any) -> str:
    """SHA-256 of a saved object's contents: every tensor's and array's dtype, shape and bytes
    and every other value, dicts in their (pickled, so kept) insertion order, other objects
    by what pickle saves of them (their `__reduce_ex__`), the tensors inside included.

    Why: torch.load does not check the archive's CRC-32 (runtime.py), so a byte flipped
    inside a tensor of a checkpoint or a model file loads silently and a resumed run, or a
    run that consumes another's model, would go on from wrong numbers. Its cost is small next
    to writing the file (benchmarks/checkpoint_io.py measures it).
    """
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def with_checksum(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` and its fingerprint under CHECKSUM_KEY: what save_torch should write."""
    if CHECKSUM_KEY in obj:
        raise ValueError(f"{CHECKSUM_KEY!r} is reserved for the checksum")
    return {**obj, CHECKSUM_KEY: fingerprint(obj)}


def verify_checksum(saved: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """`saved` without its checksum; ValueError when it does not match (the file was damaged
    after it was written) or, if `required`, is missing. Not required: files that versions
    before the checksum wrote (finished runs' model.pt) are read unchecked, as they were."""
    rest = {k: v for k, v in saved.items() if k != CHECKSUM_KEY}
    expected = saved.get(CHECKSUM_KEY)
    if expected is None:
        if not required:
            return rest
        raise ValueError("no checksum (not written by this version)")
    if fingerprint(rest) != expected:
        raise ValueError("contents do not match their checksum (damaged after it was written)")
    return rest


def _feed(digest: Any, value: Any, active: frozenset[int] = frozenset()) -> None:
    """Length-prefixed and typed, so that no two different contents feed the same bytes.
    `active`: the ids of the objects being fed above this one (a cycle is fed as a mark)."""
    import numpy as np
    import torch

    def put(tag: str, data: bytes | memoryview | np.ndarray = b"") -> None:
        size = data.nbytes if isinstance(data, memoryview | np.ndarray) else len(data)
        digest.update(f"{tag}:{size};".encode())
        digest.update(data)

    def feed(item: Any) -> None:
        _feed(digest, item, active)

    if isinstance(value, torch.Tensor) and value.is_quantized:  # its integers and what they mean
        put(f"Q{value.dtype}{tuple(value.shape)}")
        feed(value.detach().int_repr())
        feed(value.detach().dequantize())
    elif isinstance(value, torch.Tensor) and value.layout != torch.strided:  # sparse: canonical
        t = value.detach().cpu().to_sparse_coo().coalesce()
        put(f"C{value.layout}{t.dtype}{tuple(t.shape)}")
        feed(t.indices())
        feed(t.values())
    elif isinstance(value, torch.Tensor):
        t = value.detach()
        put(f"T{t.dtype}{tuple(t.shape)}")
        if t.numel():
            put("", t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray) and value.dtype != object:
        native = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))  # loads so
        put(f"N{native.dtype.descr}{native.shape}", native.reshape(-1).view(np.uint8))
    elif isinstance(value, dict):
        put(f"D{len(value)}")
        for key, item in value.items():
            feed(key)
            feed(item)
    elif isinstance(value, list | tuple):
        put(f"{type(value).__name__}{len(value)}")
        for item in value:
            feed(item)
    elif isinstance(value, set | frozenset):  # pickled order is not kept: sorted digests
        put(f"{type(value).__name__}{len(value)}")
        for item in sorted(fingerprint(item) for item in value):
            put("", item.encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        put(f"A{type(value).__qualname__}")
        feed({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif isinstance(value, str):
        put("S", value.encode())
    elif isinstance(value, bytes | bytearray):
        put(f"B{type(value).__name__}", bytes(value))
    elif value is None or isinstance(value, bool | int | float):
        put(f"{type(value).__name__}", repr(value).encode())
    elif isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):  # by name
        put("G", f"{value.__module__}.{value.__qualname__}".encode())
    else:  # anything else a plugin keeps (numpy scalars, its own classes): what pickle would
        # save of it, `__reduce_ex__`, fed part by part, so that the tensors it holds are fed
        # by their contents (a tensor's pickle names its memory and changes through a save
        # and load: hashing the pickle would set such a checkpoint aside on every resume)
        _feed_reduced(digest, value, active, put)


def _feed_reduced(digest: Any, value: Any, active: frozenset[int], put: Callable) -> None:
    if id(value) in active:
        put(f"cycle{type(value).__qualname__}")
        return
    try:
        reduced = value.__reduce_ex__(4)
    except Exception:  # what pickle cannot reduce either: its own way, or its error
        put(f"P{type(value).__qualname__}", pickle.dumps(value, protocol=4))
        return
    if isinstance(reduced, str):  # a singleton that pickle saves by name (torch.float32)
        put(f"G{type(value).__module__}.{type(value).__qualname__}", reduced.encode())
        return
    parts = [list(p) if isinstance(p, Iterator) else p for p in reduced]  # list/dict items
    put(f"R{type(value).__module__}.{type(value).__qualname__}{len(parts)}")
    for part in parts:
        _feed(digest, part, active | {id(value)})
