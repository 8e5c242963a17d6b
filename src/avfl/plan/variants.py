"""Variants and their hashes: each variant's configuration, the effective settings of a method's
runs under it, their config hash, and the variant that trains them.

A method's run is identified by its *effective settings* (its own block, the shared federated
block with its overrides, model, partition, the dataset's extraction, and the effective
settings of the methods it consumes). Runs with the same effective settings are the same run:
they are trained once, under the first variant (in config order, `default` first) that needs
them, and every other variant reads them from there. Partitions and embeddings are shared the
same way, by their own settings.

A consumed run can differ from the consumed method's own row (ModalityMirror's phase 1 at an
equal budget trains fewer rounds than MultiFL's row): it lives under a *derived* variant,
`<variant>-for-<consumer>`, the variant with the consumed method's federated settings
overridden. Derived variants are planned and trained like the others but never reported.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from avfl import paths
from avfl.config import stable_hash, variant_configs
from avfl.methods import get_method

PARAMETER_FREE = {"fbank_stats", "color_stats"}


def memo(fn: Callable) -> Callable:
    """Per-instance memoisation of a method (the plan is computed once per workflow parse)."""

    @functools.wraps(fn)
    def wrapper(self, *args):
        cache = self.__dict__.setdefault("_memo", {})
        key = (fn.__name__, args)
        if key not in cache:
            cache[key] = fn(self, *args)
        return cache[key]

    return wrapper


def needs_gpu(device: str, backbones: list[str]) -> bool:
    """A job asks for a GPU (its rule's `gpu` resource) under `device: cuda`, and under `auto`
    where a backbone has parameters: parameter-free backbones leave tiny heads to train, which
    are launch-bound and as fast on a CPU core. `avfl.device` then computes exactly where the
    rule asked: a GPU job that cannot use its GPU fails instead of falling back to the CPU."""
    if device == "cpu":
        return False
    return device == "cuda" or any(b not in PARAMETER_FREE for b in backbones)


class Variants:
    """The configuration's variants, what their runs depend on, and the inputs they share."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.data = config["data_dir"]
        self.variants = variant_configs(config)
        self.reported = list(self.variants)  # the configured variants, `default` first
        self.derived: dict[tuple[str, str, str], str] = {}  # (variant, consumer, consumed) ->
        for name in self.reported:
            for consumer, (consumed, cfg) in self._derive(self.variants[name]).items():
                derived = f"{name}-for-{consumer}"
                self.variants[derived] = cfg
                for method in consumed:
                    self.derived[(name, consumer, method)] = derived

    @staticmethod
    def _derive(cfg: Mapping[str, Any]) -> dict[str, tuple[list[str], dict[str, Any]]]:
        """consumer -> (the methods it consumes with other federated settings than their own,
        the config whose runs of them it reads)."""
        found = {}
        for consumer, block in cfg["methods"].items():
            federated = {**cfg["federated"], **block.get("federated", {})}
            wanted = get_method(consumer).consumed_overrides(block, federated)
            if not wanted:
                continue
            derived = copy.deepcopy(dict(cfg))
            for consumed, overrides in wanted.items():
                own = derived["methods"][consumed]
                own["federated"] = {**own.get("federated", {}), **overrides}
            found[consumer] = (list(wanted), derived)
        return found

    def consumed_variant(self, variant: str, consumer: str, consumed: str) -> str:
        """The variant under which `consumer`'s runs of `variant` find their `consumed` run."""
        return self.derived.get((variant, consumer, consumed), variant)

    def dataset(self, name: str) -> dict[str, Any]:
        return self.config["datasets"][name]

    def _canonical(self, key_of) -> dict[str, str]:
        """variant -> the first variant whose key_of(variant) is the same."""
        first: dict[str, str] = {}
        result = {}
        for name in self.variants:
            key = stable_hash(key_of(self.variants[name]))
            result[name] = first.setdefault(key, name)
        return result

    # --- partitions and embeddings, shared by their own settings -------------------------------

    @memo
    def partition_variant(self, variant: str) -> str:
        return self._canonical(lambda c: c["partition"])[variant]

    @memo
    def embed_variant(self, variant: str) -> str:
        return self._canonical(
            lambda c: {
                **{m: c["model"][m] for m in ("audio", "visual")},
                "float32_precision": c["federated"]["float32_precision"],
            }
        )[variant]

    def partition_seed(self, variant: str, seed: int) -> int:
        pinned = self.variants[variant]["partition"]["seed"]
        return int(seed) if pinned is None else pinned

    def partition_file(self, dataset: str, variant: str, fold: int, seed: int) -> str:
        return paths.fill(paths.PARTITION, dataset=dataset, variant=self.partition_variant(variant),
                          fold=fold, seed=self.partition_seed(variant, seed))  # fmt: skip

    def partition_settings(self, dataset: str, variant: str) -> str:
        return json.dumps(self.variants[variant]["partition"], sort_keys=True)

    def feature_files(self, dataset: str) -> dict[str, str]:
        rehearsal = self.dataset(dataset)["source"] == "rehearsal"
        names = paths.REHEARSAL_FEATURES if rehearsal else paths.VIDEO_FEATURES
        return paths.feature_files(self.data, dataset, names)

    def frozen(self, variant: str) -> bool:
        return self.variants[variant]["model"]["mode"] == "frozen"

    def embedding_files(self, dataset: str, variant: str, fold: int) -> dict[str, str]:
        model = self.variants[variant]["model"]
        where = {"data": self.data, "dataset": dataset, "variant": self.embed_variant(variant)}
        return {
            "audio": paths.fill(paths.AUDIO_EMBEDDING, fold=fold, backbone=model["audio"]["backbone"], **where),
            "visual": paths.fill(paths.VISUAL_EMBEDDING, backbone=model["visual"]["backbone"], **where),
        }  # fmt: skip

    def embed_settings(self, dataset: str, variant: str, modality: str) -> str:
        cfg = self.variants[variant]
        fed = cfg["federated"]
        return json.dumps(
            {"spec": cfg["model"][modality], "extract": self.dataset(dataset)["extract"],
             "device": fed["device"], "float32_precision": fed["float32_precision"],
             "gpu": self.needs_gpu(variant, modality)},
            sort_keys=True,
        )  # fmt: skip

    def needs_gpu(self, variant: str, modality: str | None = None) -> bool:
        """Whether a variant's embed (one modality) or training jobs ask for a GPU."""
        cfg = self.variants[variant]
        modalities = [modality] if modality else ["audio", "visual"]
        return needs_gpu(
            cfg["federated"]["device"], [cfg["model"][m]["backbone"] for m in modalities]
        )

    # --- runs' settings and hashes -----------------------------------------------------------

    @memo
    def effective(self, dataset: str, variant: str, method: str) -> dict[str, Any]:
        """Everything a run of `method` depends on, besides (fold, rate, seed)."""
        cfg = self.variants[variant]
        spec = get_method(method)
        block = dict(cfg["methods"][spec.settings_of or method])  # MethodSpec.settings_of
        overrides = block.pop("federated", {})
        return {
            "model": cfg["model"],
            "federated": {**cfg["federated"], **overrides},
            "partition": cfg["partition"],
            "extract": self.dataset(dataset)["extract"],
            # Models are selected on the metric Table 1 reports (top-5 on ActivityNet).
            "selection_metric": self.dataset(dataset)["report_metric"],
            "method": block,
            # The personalised evaluation is part of the run's record (avfl/personalise.py).
            "evaluation": cfg["evaluation"],
            "consumes": {
                c: self.config_hash(dataset, self.consumed_variant(variant, method, c), c)
                for c in spec.requires(block)
            },
        }

    @memo
    def config_hash(self, dataset: str, variant: str, method: str) -> str:
        return stable_hash(self.effective(dataset, variant, method))

    @memo
    def run_variant(self, dataset: str, variant: str, method: str) -> str:
        """The variant that trains `method`'s runs of `variant` (the first with its settings)."""
        own = self.config_hash(dataset, variant, method)
        for name in self.variants:
            if self.config_hash(dataset, name, method) == own:
                return name
        raise AssertionError("unreachable")

    def changed_methods(self, dataset: str, methods: list[str]) -> dict[str, list[str]]:
        """variant -> the methods whose runs it changes (trains under its own name)."""
        return {
            v: [m for m in methods if self.run_variant(dataset, v, m) == v]
            for v in self.reported
            if v != "default"
        }
