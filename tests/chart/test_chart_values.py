"""We test: values.yaml and values.schema.json agree both ways (defaults validate, every schema property
has a default, every object is closed), and every key of values.yaml has a `## @param` line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import yaml
from chart_helpers import CHART

VALUES_TEXT = (CHART / "values.yaml").read_text(encoding="utf-8")
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
PARAMS = re.findall(r"^\s*## @param (\S+)", VALUES_TEXT, flags=re.MULTILINE)


def _schema_objects(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if "properties" in schema:
        yield path, schema
        for name, child in schema["properties"].items():
            yield from _schema_objects(child, f"{path}.{name}".lstrip("."))
    if isinstance(schema.get("items"), dict):
        yield from _schema_objects(schema["items"], f"{path}[]")


def _value_paths(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}.{key}".lstrip(".")
        yield path
        if isinstance(value, dict):
            yield from _value_paths(value, path)
        for index, item in enumerate(value if isinstance(value, list) else []):
            if isinstance(item, dict):
                yield from _value_paths(item, f"{path}[{index}]")


def test_defaults_validate_against_the_schema() -> None:
    """We test: values.yaml itself is valid by values.schema.json."""
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def test_every_schema_object_is_closed() -> None:
    """We test: each object in the schema that lists properties refuses unknown ones."""
    for path, schema in _schema_objects(SCHEMA):
        assert schema.get("additionalProperties") is False, f"{path or '(root)'} is open"


def test_every_schema_property_has_a_default() -> None:
    """We test: each property the schema declares (outside list items) exists in values.yaml."""
    for path, schema in _schema_objects(SCHEMA):
        if "[]" in path:
            continue
        node: Any = VALUES
        for part in filter(None, path.split(".")):
            node = node[part]
        for name in schema["properties"]:
            if name == "global":
                continue
            assert name in node, f"{path}.{name} is in the schema but not in values.yaml".lstrip(".")


def test_every_value_is_documented() -> None:
    """We test: each key of values.yaml has a `## @param` line, itself, an ancestor marked [object]/[array],
    or its children (`pools[0].name`)."""
    documented = set(PARAMS)
    for path in _value_paths(VALUES):
        parts = path.split(".")
        ancestors = {".".join(parts[:n]) for n in range(1, len(parts))}
        if path in documented or ancestors & documented:
            continue
        child_params = [p for p in documented if p.startswith((f"{path}.", f"{path}["))]
        assert child_params, f"{path} has no ## @param line"


def test_every_param_names_a_real_key() -> None:
    """We test: no `## @param` line documents a key that values.yaml does not have."""
    paths = set(_value_paths(VALUES))
    assert PARAMS
    assert [p for p in PARAMS if p not in paths] == []
