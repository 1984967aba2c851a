"""The configuration's JSON schema (`schemas/config.schema.yaml`) applied to a merged config: the
strings `--config` hands over read as the types the schema asks for, then one validation that fills
in the schema's defaults and reports every problem, a line each, naming its key."""

from __future__ import annotations

import copy
import functools
import operator
from typing import Any, Iterable

import jsonschema

from phi3v.errors import UserError


def _parse_scalar(text: str, types: set[str]) -> Any:
    """`text` as the first of the schema's `types` it reads as; unchanged when it reads as none."""
    if "null" in types and text.strip().lower() in ("null", "none", "~", ""):
        return None
    if "boolean" in types and text.strip().lower() in ("true", "false", "yes", "no"):
        return text.strip().lower() in ("true", "yes")
    for kind, parse in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return parse(text)
            except ValueError:
                pass
    if "array" in types:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def type_command_line_strings(config: dict, schema: dict) -> None:
    """Read, in place, every string where the schema wants another type as that type.

    Snakemake reads `--config` values nested in a mapping with YAML's BaseLoader, which keeps every
    scalar a string (`hardware={nodes: 2}` gives `"2"`), and a top-level `runs_filter=docvqa/*` stays a
    string too; jsonschema's type errors say where those strings are and what they should be.
    """
    errors = [error for error in jsonschema.Draft202012Validator(schema).iter_errors(config)
              if error.validator == "type" and isinstance(error.instance, str)]
    for error in errors:  # collected first: the walk above reads the config as it was given
        *parents, key = error.absolute_path
        kinds = error.validator_value
        container = functools.reduce(operator.getitem, parents, config)
        container[key] = _parse_scalar(error.instance, {kinds} if isinstance(kinds, str) else set(kinds))


def _filling_defaults(validator_class: type) -> type:
    """`validator_class` that also sets each absent property to its schema default as it validates.

    Snakemake's `validate(config, schema, set_default=True)` does this (jsonschema's documented
    recipe) but stops at the first error; this reports them all in the same single pass.
    """
    check_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties_with_defaults})


def key_path(path: Iterable) -> str:
    """`["runs", 3, "precision"]` -> `runs[3].precision`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    """The keys a mapping may hold: its schema's `properties` and those of the schema its `$ref` names."""
    keys = set(schema.get("properties", {}))
    if "$ref" in schema:  # the schema's references are local, `#/$defs/<name>`: a key path in `root`
        target = functools.reduce(operator.getitem, schema["$ref"].removeprefix("#/").split("/"), root)
        keys |= set(_allowed_keys(target, root))
    return sorted(keys)


def describe_error(error: jsonschema.ValidationError, root: dict) -> str:
    """One line naming the key path, the offending value and what is allowed."""
    where = f"config key `{key_path(error.absolute_path)}`"
    kind, instance = error.validator, error.instance
    if kind == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return f"{where}: {instance!r} is not allowed; allowed values: {allowed}"
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(error.schema, root)
        unknown = sorted(set(instance) - set(allowed)) if allowed else sorted(instance)
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key(s) {', '.join(map(repr, unknown))}{hint}"
    if kind == "required":
        return f"{where}: {error.message}; add it"
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        return f"{where}: {instance!r} is a {type(instance).__name__}, expected {wanted}"
    return f"{where}: {error.message}"


def validate(config: dict, schema: dict) -> None:
    """Fill in the schema's defaults, in place; raise one UserError that lists every problem, a line
    each, naming its key."""
    validator = _filling_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [describe_error(error, schema) for error in errors]
        raise UserError("invalid configuration:\n  " + "\n  ".join(lines))
