"""Checksums of saved models and checkpoints (records.fingerprint): any change of a value,
dtype, shape or structure changes them, and a torch.save round trip does not."""

from __future__ import annotations

import enum

import numpy as np
import pytest
import torch

from avfl.records import CHECKSUM_KEY, fingerprint, verify_checksum, with_checksum

from .helpers import flip_a_tensor_byte


def shrunk_set() -> set:
    """{5, 99} in the table of 100 elements it was cut from: iterates as [5, 99], but its
    pickle rebuilds it in a small table, which iterates as [99, 5]."""
    ids = set(range(100))
    for i in range(100):
        if i not in (5, 99):
            ids.discard(i)
    return ids


class RowStore:
    """A plugin server's state as plugin authors write it: an object holding tensors (its
    pickle names the tensors' memory, which changes through a save and load)."""

    def __init__(self) -> None:
        self.rows = torch.arange(6.0).reshape(2, 3)
        self.seen = {7: torch.ones(2)}
        self.owner = self  # a cycle


class Slotted:
    __slots__ = ("kind", "weights")

    def __init__(self) -> None:
        self.weights, self.kind = torch.full((2,), 0.5), Mode.SOFT


class Mode(enum.Enum):
    SOFT = "soft"
    HARD = "hard"


def checkpoint_like() -> dict:
    base = torch.arange(12, dtype=torch.float32)
    return {
        "format": 4,
        "state": {"w": base[2:8].view(2, 3), "b": torch.zeros(())},  # a view of a larger storage
        "curve": [{"audio": 0.25, "round": 1}],
        "server": {"rho": np.array([0.5, 2.0]), "rows": {3: torch.ones(4, dtype=torch.bfloat16)}},
        "flags": (True, None, "x"),
        "plugin": {
            "sparse": torch.eye(3).to_sparse(),
            "quantized": torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
            "count": np.int64(3),
            "ids": shrunk_set(),
            "big_endian": np.arange(3, dtype=">i4"),  # loads back little-endian
            "store": RowStore(),
            "slotted": Slotted(),
            "meta": (torch.float16, torch.device("cpu"), np.dtype("f4"), b"raw", slice(1, 4)),
            "module": torch.nn.Linear(3, 2),
            "generators": (torch.Generator().manual_seed(3), np.random.default_rng(1)),
        },
    }


def test_a_torch_save_round_trip_keeps_the_fingerprint(tmp_path):
    obj = checkpoint_like()
    torch.save(with_checksum(obj), tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=False)
    assert set(verify_checksum(loaded)) == set(obj)
    assert fingerprint(obj) == loaded[CHECKSUM_KEY]
    assert fingerprint({"w": obj["state"]["w"].clone()}) == fingerprint({"w": obj["state"]["w"]})


@pytest.mark.parametrize(
    "change",
    [
        "a value",
        "a dtype",
        "a shape",
        "a numpy value",
        "a float in a list",
        "a key",
        "an order",
        "a sparse value",
        "a tensor in a plugin's object",
        "a plugin's slotted object",
        "a module's weight",
        "a generator's state",
    ],
)
def test_every_kind_of_change_changes_the_fingerprint(change):
    obj = checkpoint_like()
    before = fingerprint(obj)
    if change == "a value":
        obj["state"]["w"] = obj["state"]["w"].clone()
        obj["state"]["w"][1, 2] = torch.nextafter(obj["state"]["w"][1, 2], torch.tensor(100.0))
    elif change == "a dtype":
        obj["state"]["b"] = obj["state"]["b"].double()
    elif change == "a shape":
        obj["state"]["w"] = obj["state"]["w"].reshape(3, 2)
    elif change == "a numpy value":
        obj["server"]["rho"] = np.array([0.5, 2.0000001])
    elif change == "a float in a list":
        obj["curve"][0]["audio"] = 0.25000000000000006
    elif change == "a key":
        obj["server"]["rows"] = {4: obj["server"]["rows"][3]}
    elif change == "a sparse value":
        obj["plugin"]["sparse"] = (2 * torch.eye(3)).to_sparse()
    elif change == "a tensor in a plugin's object":
        obj["plugin"]["store"].seen[7][1] = 2.0
    elif change == "a plugin's slotted object":
        obj["plugin"]["slotted"].kind = Mode.HARD
    elif change == "a module's weight":
        with torch.no_grad():
            obj["plugin"]["module"].weight[0, 0] += 1
    elif change == "a generator's state":
        obj["plugin"]["generators"][1].random()
    else:
        obj["state"] = {"b": obj["state"]["b"], "w": obj["state"]["w"]}
    assert fingerprint(obj) != before


def test_a_flipped_byte_loads_silently_but_fails_the_checksum(tmp_path):
    path = tmp_path / "c.pt"
    torch.save(with_checksum({"w": torch.randn(1000)}), path)
    flip_a_tensor_byte(path)
    loaded = torch.load(path, weights_only=True)  # torch.load itself does not notice
    with pytest.raises(ValueError, match="do not match their checksum"):
        verify_checksum(loaded)
    with pytest.raises(ValueError, match="no checksum"):
        verify_checksum({"w": torch.ones(1)})
    assert set(verify_checksum({"w": torch.ones(1)}, required=False)) == {"w"}
    with pytest.raises(ValueError, match="reserved"):
        with_checksum({CHECKSUM_KEY: "x"})
