"""Configuration: schema validation with defaults, and the checks a schema cannot express.

The workflow calls :func:`validate_config` once at start, so a bad config is
rejected before any job runs, with a message that names the offending key.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from avfl.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is wrong; the message names the key and what to change."""


def load_schema() -> dict[str, Any]:
    """The config JSON schema: the file shipped with the package, plus each registered
    method's settings block generated from its declaration (one source for workflow and CLI)."""
    return copy.deepcopy(_schema())


@functools.cache
def _schema() -> dict[str, Any]:
    text = resources.files("avfl").joinpath("schema/config.schema.yaml").read_text()
    schema = yaml.safe_load(text)
    schema["properties"]["methods"]["properties"] = method_schemas(
        schema["properties"]["federated"]
    )
    return schema


def method_schemas(federated: Mapping[str, Any]) -> dict[str, Any]:
    """name -> the JSON schema of its config block, from the method registry.

    Every method also accepts `federated`: overrides of the shared federated block for that
    method alone (an equal-budget ablation, say); they change its runs and those of the
    methods that consume it, nothing else.
    """
    from avfl.methods import registry

    override = copy.deepcopy(dict(federated))
    override["description"] = "Overrides of the shared federated block for this method alone."
    override["default"] = {}
    for prop in override["properties"].values():
        prop.pop("default", None)
    blocks = {}
    for name, spec in registry().items():
        properties = {s.name: s.json_schema() for s in spec.settings}
        description = f"{spec.display}: {spec.summary}" + (f" ({spec.cite})" if spec.cite else "")
        if spec.settings_of:  # configured by the other method's block, federated included
            description += (
                f". It runs with the settings of methods.{spec.settings_of}: set them there"
            )
        else:
            properties["federated"] = override
        blocks[name] = {
            "type": "object",
            "additionalProperties": False,
            "default": {},
            "description": description,
            "properties": properties,
        }
    return blocks


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


def validate_config(config: Mapping[str, Any], check_variants: bool = True) -> dict[str, Any]:
    """Validate `config`, fill defaults, and return the completed copy.

    Raises ConfigError listing every problem found, each naming its key.
    """
    schema = load_schema()
    completed = copy.deepcopy(dict(config))
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(completed), key=lambda e: list(e.absolute_path))
    problems = [_describe(e, schema) for e in errors]
    if not problems:
        problems = list(_semantic_problems(completed, check_variants))
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return completed


def _semantic_problems(config: Mapping[str, Any], check_variants: bool = True) -> Iterable[str]:
    """Cross-field checks that JSON schema cannot express."""
    from avfl.methods import methods, registry

    runnable = methods("method", opt_in=True) + methods("ablation", opt_in=True)
    opt_in_references = [r for r in methods("reference", opt_in=True) if registry()[r].opt_in]
    for key in ("methods", "ablation_methods"):
        for name in config["experiment"][key] or []:
            if name not in registry():
                yield f"config key 'experiment.{key}': unknown method '{name}' (registered: {', '.join(runnable + opt_in_references)})"
            elif name in opt_in_references and key == "ablation_methods":
                yield f"config key 'experiment.ablation_methods': '{name}' is a reference: name it in experiment.methods"
            elif name not in runnable and name not in opt_in_references:
                yield f"config key 'experiment.{key}': '{name}' is a reference, not a method; references always run"
    raw = [
        n
        for n in config["experiment"]["methods"] or []
        if n in registry() and registry()[n].raw_inputs
    ]
    for name in config["run_datasets"]:
        ds = config["datasets"].get(name, {})
        if raw and ds.get("source") == "rehearsal":
            yield (
                f"config key 'experiment.methods': {', '.join(raw)} train from the raw fbank and "
                f"frames, which the rehearsal dataset '{name}' does not have: drop them or the dataset"
            )
    if check_variants:
        yield from _variant_problems(config)
    blocks = {"federated": config["federated"]} | {
        f"methods.{m}.federated": {**config["federated"], **b["federated"]}
        for m, b in config.get("methods", {}).items()
        if isinstance(b, Mapping) and b.get("federated")
    }
    for where, fed in blocks.items():
        if fed.get("momentum", 0) and fed["optimizer"] != "sgd":
            yield (
                f"config key '{where}.momentum': momentum is SGD's; with optimizer "
                f"{fed['optimizer']} set it to 0 (or set optimizer: sgd)"
            )
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
        if ds["source"] == "rehearsal":
            if "rehearsal" not in ds:
                yield f"config '{prefix}': source 'rehearsal' needs a 'rehearsal' block (settings of the generator)"
            if config["model"]["mode"] != "frozen" and name in config["run_datasets"]:
                yield f"config key 'model.mode': the rehearsal dataset '{name}' has embeddings only: use frozen"
        elif "rehearsal" in ds:
            yield f"config key '{prefix}.rehearsal': only valid with source 'rehearsal'"


LAYERED_ON = re.compile(r"^# Layered on (config/[\w.-]+\.yaml)", re.M)


def config_layers(path: str | Path) -> list[Path]:
    """The files an overlay is run with after config.yaml: the shipped overlays it names in a
    `# Layered on config/<name>.yaml` line (an overlay of an overlay, such as one fold of the
    rehearsal), then itself."""
    path = Path(path)
    root = path.resolve().parent.parent
    below = [root / m for m in LAYERED_ON.findall(path.read_text())]
    return [p for b in below for p in config_layers(b)] + [path]


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


VARIANT_BLOCKS = ("partition", "federated", "model", "methods")


def apply_overlay(config: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` with `overlay` ({dotted.key: value}) applied; a mapping value merges."""
    result = copy.deepcopy(dict(config))
    for key, value in overlay.items():
        parts = key.split(".")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"variant key '{key}': '{part}' is not a mapping")
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(target.get(leaf), dict):
            deep_update(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(value)
    return result


def variant_configs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> the validated config of each variant, `default` (the config itself) first."""
    variants = {"default": dict(config)}
    for name, overlay in config["experiment"]["variants"].items():
        variants[name] = validate_config(apply_overlay(config, overlay), check_variants=False)
    return variants


def _variant_problems(config: Mapping[str, Any]) -> Iterable[str]:
    for name, overlay in config["experiment"]["variants"].items():
        bad = [k for k in overlay if k.split(".")[0] not in VARIANT_BLOCKS]
        if bad:
            yield (
                f"config key 'experiment.variants.{name}': {', '.join(map(repr, bad))} cannot vary "
                f"(a variant overlays only {', '.join(VARIANT_BLOCKS)})"
            )
            continue
        try:
            validate_config(apply_overlay(config, overlay), check_variants=False)
        except ConfigError as exc:
            detail = str(exc).removeprefix("invalid configuration:\n  - ").replace("\n  - ", "; ")
            yield f"config key 'experiment.variants.{name}': the overlaid config is invalid: {detail}"
