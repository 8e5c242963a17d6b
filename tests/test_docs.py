"""The documentation: every config key described, the generated pages fresh, the site built
strictly, and a README that stays a user's guide."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from avfl import docs
from avfl.config import load_schema

from .conftest import REPO

HASH = re.compile(
    r"(?<![0-9A-Za-z])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![0-9A-Za-z])"
)
WEIGHT_FILE_PREFIXES = {"f37072fd"}  # ResNet-18's file name carries its checksum prefix


def test_every_config_property_has_a_description():
    missing = [
        path for path, node in docs.schema_properties(load_schema()) if not node.get("description")
    ]
    assert not missing, f"config properties without a description: {missing}"


def test_a_property_without_a_description_is_found():
    schema = {
        "properties": {
            "a": {"type": "object", "description": "x", "properties": {"b": {"type": "integer"}}}
        }
    }
    assert [p for p, n in docs.schema_properties(schema) if "description" not in n] == ["a.b"]


def test_generated_pages_are_up_to_date():
    stale = [str(p.relative_to(REPO)) for p in docs.stale()]
    assert not stale, f"stale generated documentation {stale}: run `python -m avfl docs`"


def test_a_hand_edit_of_a_generated_block_is_stale(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- BEGIN GENERATED: x -->\nold\n<!-- END GENERATED: x -->\nafter\n")
    assert docs._with_blocks(page.read_text(), {"x": lambda: "new\n"}, page) == (
        "before\n<!-- BEGIN GENERATED: x -->\nnew\n<!-- END GENERATED: x -->\nafter\n"
    )
    with pytest.raises(ValueError, match="no generated block"):
        docs._with_blocks("no markers\n", {"x": lambda: ""}, page)


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site/methods/modalitymirror/index.html").exists()


def test_every_benchmark_has_a_record_and_every_record_its_provenance():
    records = docs.load_records(REPO / "benchmarks/results")
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {"record", "gpu_check"}
    assert scripts <= set(records), f"benchmarks without a record: {sorted(scripts - set(records))}"
    for name, found in records.items():
        for record in found:
            assert {"benchmark", "command", "figures", "machine", "date", "code_version"} <= set(
                record
            ), name
            assert record["figures"], name


def test_the_readme_is_a_users_guide():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    order = [
        "```bash",
        "## What you get",
        "## Reproduce the paper on your own data",
        "## Add a method",
        "## Read more",
    ]
    assert [readme.index(h) for h in order] == sorted(readme.index(h) for h in order)
    assert not re.search(r"\bsessions?\b", readme, re.I)


def test_no_commit_hashes_in_the_prose():
    pages = [
        REPO / "README.md",
        REPO / "CHANGELOG.md",
        *REPO.glob("docs/**/*.md"),
        *REPO.glob("config/*"),
    ]
    found = {str(p.relative_to(REPO)): h for p in pages for h in HASH.findall(p.read_text())
             if h not in WEIGHT_FILE_PREFIXES}  # fmt: skip
    assert not found, found


def test_the_schemas_hold_only_schema_keywords():
    """A flow-style description with an unquoted comma splits into a stray key (and a
    truncated description) that the validator silently ignores."""
    import yaml

    keywords = {"description", "type", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "items", "properties", "additionalProperties", "required", "$ref",
                "oneOf", "anyOf", "allOf", "not", "default", "minItems", "maxItems", "uniqueItems",
                "pattern", "$defs", "$schema", "title", "propertyNames", "minProperties"}  # fmt: skip
    stray = []

    def walk(node, path, named):
        if isinstance(node, dict):
            for key, value in node.items():
                if named:  # property names or definitions: any name
                    walk(value, f"{path}.{key}", False)
                    continue
                if key == "default":
                    continue  # a value, not a schema
                if key not in keywords:
                    stray.append(f"{path}.{key}")
                walk(value, f"{path}.{key}", key in ("properties", "$defs"))
        elif isinstance(node, list):
            for value in node:
                walk(value, path, False)

    for name in ("config", "metrics"):
        walk(
            yaml.safe_load((REPO / f"src/avfl/schema/{name}.schema.yaml").read_text()), name, False
        )
    assert not stray, stray
