"""The registry of methods: the built-in modules below plus any package that registers
methods under the `avfl.methods` entry-point group.

Importing this package imports no torch: method modules declare themselves with
`avfl.methods.spec.method` and import their training code inside `run`.

A third-party package adds a method with one module and one line in its pyproject.toml:

    [project.entry-points."avfl.methods"]
    mymethod = "mypackage.mymethod"        # a module holding one MethodSpec (or "module:attr")
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from types import ModuleType

from avfl.errors import UserError
from avfl.methods.spec import MethodSpec

BUILTIN = (
    "avfl.methods.unifl",
    "avfl.methods.multifl",
    "avfl.methods.harmony",
    "avfl.methods.modalitymirror",
    "avfl.methods.fedprox",
    "avfl.methods.fedadam",
    "avfl.methods.bmsfed",
    "avfl.methods.dimml",
    "avfl.methods.m3fed",
    "avfl.methods.cmrf",
    "avfl.methods.fssuavl",
    "avfl.methods.fassl",
    "avfl.methods.centralised",
    "avfl.methods.ssl_random_probe",
)
ENTRY_POINT_GROUP = "avfl.methods"


class RegistryError(UserError, ValueError):
    """A method module or entry point does not declare a usable method."""


def _spec_of(obj: object, where: str) -> MethodSpec:
    if isinstance(obj, MethodSpec):
        return obj
    if isinstance(obj, ModuleType):
        found = [v for v in vars(obj).values() if isinstance(v, MethodSpec)]
        if len(found) == 1:
            return found[0]
        raise RegistryError(
            f"{where}: a method module must hold exactly one MethodSpec (decorate its run "
            f"function with avfl.methods.spec.method); found {len(found)}"
        )
    raise RegistryError(f"{where}: {obj!r} is not a MethodSpec or a module holding one")


@functools.cache
def registry() -> dict[str, MethodSpec]:
    """name -> MethodSpec: the built-in methods in their order, then entry points by name."""
    specs = [_spec_of(importlib.import_module(m), m) for m in BUILTIN]
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})"
        try:
            loaded = ep.load()
        except Exception as exc:
            raise RegistryError(
                f"{where}: cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        specs.append(_spec_of(loaded, where))
    found: dict[str, MethodSpec] = {}
    for spec in specs:
        if spec.name in found:
            raise RegistryError(
                f"method {spec.name!r} is registered twice ({found[spec.name].module} and {spec.module})"
            )
        found[spec.name] = spec
    for spec in found.values():
        for needed in spec.requires():
            if needed not in found:
                raise RegistryError(f"method {spec.name} consumes unknown method {needed!r}")
        if spec.settings_of and spec.settings_of not in found:
            raise RegistryError(
                f"method {spec.name} takes the settings of unknown method {spec.settings_of!r}"
            )
    return found


def get_method(name: str) -> MethodSpec:
    try:
        return registry()[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(registry())}") from None


def methods(role: str = "method", opt_in: bool = False) -> list[str]:
    """Registered names of one role, in registry order; the opt-in ones (MethodSpec.opt_in)
    only with `opt_in`."""
    return [
        name
        for name, spec in registry().items()
        if spec.role == role and (opt_in or not spec.opt_in)
    ]
