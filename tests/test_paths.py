"""Each output's path pattern and file name is written once, in avfl/paths.py: the rules, the
planner and the writers all use it, so that renaming an output is one edit."""

from __future__ import annotations

import ast
import re

from avfl import paths

from .conftest import REPO

# What only avfl/paths.py may spell out (in code: docstrings and comments may name files).
STEMS = [
    paths.MANIFEST, paths.FRAMES, paths.FBANK, paths.NORM_STATS, paths.METRICS, paths.MODEL,
    paths.RUNS_TABLE, paths.IDENTITY, paths.PARTITION_STATS_SUFFIX, paths.PARTITION_HEATMAP_SUFFIX,
    f"{paths.TABLE1}.", paths.FIGURE2, paths.FIGURE3, paths.FIGURE3_VARIANTS,
    *(f"{paths.ABLATIONS}.{e}" for e in paths.TABLE_FORMATS),
    "/partition/", "/embeddings/", "/features/", "/raw/", "/runs/", "/downloads/", "results/report",
    ".ckpt", "fold{fold}_seed", "audio_{", "visual_{",
]  # fmt: skip


def _is_path(text: str) -> bool:
    """A path pattern or a file name: no whitespace (messages and help texts may name files)."""
    return bool(text) and not any(c.isspace() for c in text) and not text.startswith("docs/")


def _code_strings(path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings and look like paths."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and _is_path(n.value)]  # fmt: skip


def test_no_output_path_or_file_name_is_written_outside_paths():
    found = []
    for path in sorted((REPO / "src/avfl").rglob("*.py")):
        if path.name == "paths.py":
            continue
        for line, text in _code_strings(path):
            found += [f"{path.relative_to(REPO)}:{line}: {text!r}" for s in STEMS if s in text]
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for text in re.findall(r'"([^"]*)"', code):
                if not _is_path(text) or text.startswith(("results/logs", "results/benchmarks")):
                    continue  # logs and benchmarks: each written once, in its rule
                found += [
                    f"{path.relative_to(REPO)}:{number}: {text!r}" for s in STEMS if s in text
                ]
    assert not found, "write these through avfl/paths.py:\n" + "\n".join(found)


def test_fill_leaves_the_wildcards_it_is_not_given():
    assert (
        paths.fill(paths.AUDIO_EMBEDDING, data="d")
        == "d/embeddings/{dataset}/{variant}/fold{fold}/audio_{backbone}.npy"
    )
    assert (
        paths.run_dir("x", "default", 2, "multifl", "0.5", 1)
        == "results/x/runs/default/fold2/multifl/r0.5/seed1"
    )
    assert paths.run_dir("x", "v", 2, "harmony", None, 1) == "results/x/runs/v/fold2/harmony/seed1"
    stats, heatmap = paths.partition_companions("results/x/partition/default/fold1_seed0.json")
    assert (stats, heatmap) == ("results/x/partition/default/fold1_seed0_stats.tsv",
                                "results/x/partition/default/fold1_seed0_heatmap.png")  # fmt: skip
