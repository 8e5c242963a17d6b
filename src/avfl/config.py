"""Configuration: schema validation with defaults, and the checks a schema cannot express.

The workflow calls :func:`validate_config` once at start, so a bad config is
rejected before any job runs, with a message that names the offending key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what to change."""


def load_schema() -> dict[str, Any]:
    """The config JSON schema shipped with the package (one source for workflow and CLI)."""
    text = resources.files("avfl").joinpath("schema/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _validator_with_defaults(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator that also fills in `default` values of absent properties."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    def fill_ref_defaults(validator, ref, instance, schema):
        # Defaults of a referenced object schema apply too (e.g. dataset.extract).
        resolved = validator._resolver.lookup(ref).contents
        if isinstance(instance, dict) and isinstance(resolved, dict):
            for name, sub in resolved.get("properties", {}).items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["$ref"](validator, ref, instance, schema)

    cls = jsonschema.validators.extend(
        base, {"properties": set_defaults, "$ref": fill_ref_defaults}
    )
    return cls(schema)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    """Turn a jsonschema error into one line that names the key and suggests a fix."""
    key = _key_path(error)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in extra:
            close = difflib.get_close_matches(name, allowed, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        where = "" if key == "<top level>" else f" under '{key}'"
        return f"unknown config key {', '.join(hints)}{where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"config '{key}': {error.message}"
    return f"config key '{key}': {error.message}"


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `config`, fill defaults, and return the completed copy.

    Raises ConfigError listing every problem found, each naming its key.
    """
    schema = load_schema()
    completed = copy.deepcopy(dict(config))
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(completed), key=lambda e: list(e.absolute_path))
    problems = [_describe(e, schema) for e in errors]
    if not problems:
        problems = list(_semantic_problems(completed))
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return completed


def _semantic_problems(config: Mapping[str, Any]) -> Iterable[str]:
    """Cross-field checks that JSON schema cannot express."""
    from avfl.methods import REGISTRY

    for name in config["experiment"]["methods"]:
        if name not in REGISTRY:
            yield f"config key 'experiment.methods': unknown method '{name}' (registered: {', '.join(REGISTRY)})"
        elif name not in config["methods"]:
            yield f"config key 'methods': no settings block for method '{name}' (add it to the schema's methods)"
    for method, cls in REGISTRY.items():
        required = cls().requires
        if (
            method in config["experiment"]["methods"]
            and required
            and required not in config["experiment"]["methods"]
        ):
            yield f"config key 'experiment.methods': {method} consumes {required}'s result; add '{required}'"
    datasets = config["datasets"]
    for name in config["run_datasets"]:
        if name not in datasets:
            yield (
                f"config key 'run_datasets': '{name}' is not defined under 'datasets' "
                f"(defined: {', '.join(sorted(datasets))})"
            )
    for name, ds in datasets.items():
        prefix = f"datasets.{name}"
        if ds["source"] == "synthetic":
            syn = ds.get("synthetic")
            if syn is None:
                yield f"config '{prefix}': source 'synthetic' needs a 'synthetic' block"
                continue
            for key in ("clips_per_group", "duration_s", "snr_db"):
                low, high = syn[key]
                if low > high:
                    yield f"config key '{prefix}.synthetic.{key}': lower bound {low} exceeds upper bound {high}"
            audible = syn["n_classes"] - syn["n_silent_classes"]
            if audible < 2:
                yield (
                    f"config key '{prefix}.synthetic.n_silent_classes': leaves {audible} classes "
                    f"with audio out of n_classes={syn['n_classes']}; at least 2 are needed"
                )
            if 2 * syn["n_audio_twins"] > max(audible, 0):
                yield (
                    f"config key '{prefix}.synthetic.n_audio_twins': {syn['n_audio_twins']} pairs "
                    f"need {2 * syn['n_audio_twins']} classes with audio, only {audible} exist"
                )
        elif "synthetic" in ds:
            yield f"config key '{prefix}.synthetic': only valid with source 'synthetic'"


def load_config(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Load and merge YAML config files (later files win, as Snakemake's --configfile) and validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
        deep_update(merged, data)
    return validate_config(merged)


def deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update with Snakemake's semantics: mappings merge, everything else is replaced."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short hash of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
