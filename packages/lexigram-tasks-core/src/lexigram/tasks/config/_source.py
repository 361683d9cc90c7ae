"""Reading a configuration: YAML text or a mapping, line numbers, ``${VAR}`` interpolation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lexigram.tasks.errors import ConfigurationError

#: A key path inside the document, e.g. ``("tasks", "backends", 1, "type")``.
KeyPath = tuple[str | int, ...]

# $$ is a literal $; ${NAME} and ${NAME:-default} read the environment.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


@dataclass(slots=True)
class Source:
    """A parsed configuration document and where it came from."""

    data: Any
    origin: str
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        """``file:line`` for ``path`` (or its nearest ancestor), or just the origin."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return f"{self.origin}:{line}"
        return self.origin

    def error(self, path: KeyPath, message: str) -> str:
        """One line naming the place, the key path and the problem."""
        key = format_path(path)
        return f"{self.where(path)}: {key}: {message}" if key else f"{self.where(path)}: {message}"


def format_path(path: KeyPath) -> str:
    """``tasks.backends[1].type`` for ``("tasks", "backends", 1, "type")``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def read_source(source: str | os.PathLike[str] | Mapping[str, Any]) -> Source:
    """Parse a YAML file, or take a mapping as it is."""
    if isinstance(source, Mapping):
        return Source(dict(source), "<mapping>")
    path = Path(source)
    origin = str(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"{origin}: configuration file not found") from None
    except OSError as exc:
        raise ConfigurationError(f"{origin}: cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        raise ConfigurationError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{origin}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    return Source(data, origin, lines)


def _key_lines(node: yaml.Node | None, path: KeyPath = ()) -> dict[KeyPath, int]:
    """The 1-based line of every key (and list item) in a composed YAML tree."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*path, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                lines.update(_key_lines(value_node, child))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            lines.update(_key_lines(item, child))
    return lines


def interpolate(source: Source, env: Mapping[str, str]) -> None:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value, in place.

    ``${VAR:-default}`` uses the default when ``VAR`` is unset or empty, as
    the shell does; ``$$`` writes a literal ``$``. Every unset variable
    without a default is reported at once, each with its key path.
    """
    problems: list[str] = []
    source.data = _walk(source.data, (), env, source, problems)
    if problems:
        raise ConfigurationError(join_problems(problems), problems=problems)


def _walk(
    value: Any, path: KeyPath, env: Mapping[str, str], source: Source, problems: list[str]
) -> Any:
    if isinstance(value, str):
        return _substitute(value, path, env, source, problems)
    if isinstance(value, Mapping):
        return {k: _walk(v, (*path, str(k)), env, source, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), env, source, problems) for i, v in enumerate(value)]
    return value


def _substitute(
    text: str, path: KeyPath, env: Mapping[str, str], source: Source, problems: list[str]
) -> str:
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name is None:
            problems.append(
                source.error(
                    path,
                    f"malformed variable reference {token!r}: use ${{NAME}} or "
                    "${NAME:-default} (write $$ for a literal $)",
                )
            )
            return token
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is None:
            problems.append(
                source.error(
                    path,
                    f"environment variable {name} is not set "
                    f"(set it, or write ${{{name}:-default}} to give a default)",
                )
            )
        return ""

    return _VARIABLE.sub(replace, text)


def join_problems(problems: list[str]) -> str:
    """The message of an error with these problems: one line per problem."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} configuration errors:\n" + "\n".join(f"  {p}" for p in problems)
