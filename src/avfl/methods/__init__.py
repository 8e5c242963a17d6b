"""The methods, registered in one place: adding one is a module plus an entry here (and its
config block in the schema)."""

from __future__ import annotations

from avfl.methods.base import Method
from avfl.methods.harmony import Harmony
from avfl.methods.modalitymirror import ModalityMirror
from avfl.methods.multifl import MultiFL
from avfl.methods.unifl import UniFL

REGISTRY: dict[str, type] = {
    "unifl": UniFL,
    "multifl": MultiFL,
    "harmony": Harmony,
    "modalitymirror": ModalityMirror,
}


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(REGISTRY)}") from None
