"""Turning pydantic's validation errors into one line per problem, naming the key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import pydantic

from lexigram.tasks.config._source import KeyPath, Source
from lexigram.tasks.redact import redact_urls
from lexigram.tasks.worker import WorkerSettings

#: pydantic's error types for a key that is not accepted (models, dataclasses).
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


def describe(
    doc: Source,
    base: KeyPath,
    data: Any,
    exc: pydantic.ValidationError,
    accepted: Mapping[tuple[str, ...], list[str]],
    component_type: str | None = None,
) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = _key_loc(data, error["loc"], error["type"])
        path = (*base, *loc)
        problems.append(doc.error(path, _explain(error, path, loc, accepted, component_type)))
    return problems


def _key_loc(data: Any, loc: tuple[int | str, ...], kind: str) -> KeyPath:
    """The part of pydantic's ``loc`` that names keys of the document.

    pydantic appends union members and validator names (``int``,
    ``function-after[...]``) to ``loc``; they are not keys, so the path is
    cut where the document has no such key, except for the key that is
    missing or unknown itself.
    """
    path: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        in_mapping = isinstance(current, Mapping) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_mapping or in_list:
            current = current[part]
        else:
            if index == len(loc) - 1 and kind in ("missing", *_UNKNOWN_KEY):
                path.append(part)
            break
        path.append(part)
    return tuple(path)


def _explain(
    error: Any,
    path: KeyPath,
    loc: KeyPath,
    accepted: Mapping[tuple[str, ...], list[str]],
    component_type: str | None,
) -> str:
    kind = error["type"]
    if kind in _UNKNOWN_KEY:
        parent = tuple(str(p) for p in path[:-1] if isinstance(p, str))
        keys = accepted.get(tuple(str(p) for p in loc[:-1]), accepted.get(parent, []))
        return _unknown_key(str(path[-1]), keys, path, component_type)
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if not isinstance(error.get("input"), dict | list):
        message += f" (got {_show(error.get('input'))})"
    return message


def _unknown_key(key: str, accepted: list[str], path: KeyPath, component_type: str | None) -> str:
    message = "unknown key"
    if component_type is not None:
        message += f" for type {component_type!r}"
    if key in WorkerSettings.names() and path[:-1] != ("tasks", "worker"):
        return f"{message}; worker settings go under tasks.worker ({key} there)"
    if key == "worker" and path[:1] == ("tasks",):
        return f"{message}; worker settings go under tasks.worker, beside the backend"
    close = difflib.get_close_matches(key, accepted, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    if accepted:
        message += f" (accepted: {', '.join(accepted)})"
    return message


def _show(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str):
        text = repr(redact_urls(value))
    return text if len(text) <= 80 else text[:77] + "..."
