"""Pydantic validation errors as located problems: the key path as the user wrote it (union tags
dropped), the file and line (from the YAML), and a message that says what is expected (close
matches for unknown keys and values). Recipes, site.yaml and written recipes all report this way."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .errors import KeyPath, Problem
from .yamlsource import LocatedDoc

_PATTERN_HINTS = {
    r"^[a-z0-9][a-z0-9-]{0,62}$": "must be lowercase letters, digits and '-', at most 63 characters",
    r"^[a-z0-9][a-z0-9.-]{0,31}$": "must be a release name or version: lowercase letters, digits, '.', '-'",
    r"^https?://[^\s]+$": "must be an http:// or https:// URL",
    r"^[0-9]+\.[0-9]+$": "must be a version like '11.8'",
    r"^[A-Z_][A-Z0-9_]{0,63}$": "must be an environment variable name (A-Z, 0-9, _)",
}

_COMPARISONS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}

_TYPE_MESSAGES = {
    "missing": "required key is missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def problems_from_validation(
    exc: ValidationError, doc: LocatedDoc, model: type[BaseModel], root: KeyPath = ()
) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        key_path, message = _describe(error, doc, model, root)
        problems.append(Problem(message, doc.locate(key_path), key_path))
    return problems


def _describe(error: Any, doc: LocatedDoc, model: type[BaseModel], root: KeyPath) -> tuple[KeyPath, str]:
    kind = error["type"]
    loc = _strip_union_tags(tuple(error["loc"]), doc.data, root, last_may_be_tag=kind not in _KEY_ERRORS)
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "extra_forbidden":
        known = _field_names_at(model, loc[len(root) : -1])
        return (*root, *loc[len(root) :]), _unknown_key_message(str(loc[-1]), known)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = ctx.get("discriminator", "").strip("'")
        tags = ctx.get("expected_tags", "").replace("'", "") or ", ".join(
            _tag_values(model, loc[len(root) :], discriminator)
        )
        key = (*loc, discriminator)
        if kind == "union_tag_not_found":
            return key, f"required key is missing (one of {tags})"
        return key, f"must be one of {tags} (got {ctx.get('tag')!r})"
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", "").replace(" or ", ", ")
        return loc, f"must be one of {expected} (got {got!r})"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        hint = _PATTERN_HINTS.get(pattern, f"must match {pattern}")
        return loc, f"{hint} (got {got!r})"
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        return loc, "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
    if kind in _COMPARISONS:
        op = _COMPARISONS[kind]
        bound = next(iter(ctx.values()), "?")
        return loc, f"must be {op} {bound} (got {got!r})"
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"]))
    if kind in _TYPE_MESSAGES:
        suffix = "" if kind == "missing" else f" (got {_short(got)})"
        return loc, _TYPE_MESSAGES[kind] + suffix
    return loc, str(error["msg"])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_KEY_ERRORS = ("missing", "extra_forbidden")  # their last location part is a key, never a tag


def _strip_union_tags(loc: KeyPath, data: Any, root: KeyPath, last_may_be_tag: bool = True) -> KeyPath:
    """Drop the discriminator values pydantic inserts into locations (``build.dib.elements``) and
    the ``[key]`` markers of dict-key errors, so the path matches what the user wrote."""
    out: list[str | int] = []
    current: Any = data
    for part in root:
        current = current.get(part) if isinstance(current, dict) else None
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        if (
            isinstance(current, dict)
            and isinstance(part, str)
            and part not in current
            and (index < len(loc) - 1 or last_may_be_tag)
            and part in {v for v in current.values() if isinstance(v, str)}
        ):
            continue  # a tag, not a key
        out.append(part)
        if isinstance(current, dict):
            current = current.get(part) if isinstance(part, str) else None
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
    return tuple(out)


def _tag_values(model: type[BaseModel], path: KeyPath, discriminator: str) -> list[str]:
    """The values a discriminator may take at ``path`` (from the Literal of each union member)."""
    values: list[str] = []
    for candidate in _models_at(model, path):
        field = candidate.model_fields.get(discriminator)
        if field is not None:
            values.extend(str(v) for v in get_args(field.annotation) if str(v) not in values)
    return values


def _models_at(model: type[BaseModel], path: KeyPath) -> list[type[BaseModel]]:
    return [
        c
        for a in _annotations_at(model, path)
        for c in _unwrap(a)
        if isinstance(c, type) and issubclass(c, BaseModel)
    ]


def _field_names_at(model: type[BaseModel], path: KeyPath) -> list[str]:
    """The keys a mapping at ``path`` below ``model`` may have (for "did you mean")."""
    names: list[str] = []
    for candidate in _models_at(model, path):
        names.extend(n for n in candidate.model_fields if n not in names)
    return names


def _annotations_at(model: type[BaseModel], path: KeyPath) -> list[Any]:
    annotations: list[Any] = [model]
    for part in path:
        next_annotations: list[Any] = []
        for annotation in annotations:
            for candidate in _unwrap(annotation):
                if isinstance(part, int) and get_origin(candidate) is list:
                    next_annotations.extend(get_args(candidate)[:1])
                elif get_origin(candidate) is dict:
                    next_annotations.extend(get_args(candidate)[1:2])
                elif (
                    isinstance(candidate, type)
                    and issubclass(candidate, BaseModel)
                    and isinstance(part, str)
                    and part in candidate.model_fields
                ):
                    next_annotations.append(candidate.model_fields[part].annotation)
        annotations = next_annotations
    return annotations


def _unwrap(annotation: Any) -> list[Any]:
    """Annotated[X, ...] -> X; Union[A, B] -> A, B (recursively)."""
    origin = get_origin(annotation)
    if origin is not None and getattr(origin, "__name__", "") == "Annotated":
        return _unwrap(get_args(annotation)[0])
    if hasattr(annotation, "__metadata__"):
        return _unwrap(annotation.__origin__)
    if origin is Union or type(annotation).__name__ == "UnionType":
        return [c for arg in get_args(annotation) for c in _unwrap(arg)]
    return [annotation]


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    if known:
        return f"unknown key (expected one of: {', '.join(known)})"
    return "unknown key"


def one_of_message(value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"must be one of {', '.join(choices)} (got {value!r}){hint}"
