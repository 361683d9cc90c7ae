"""What the process executor checks and rebuilds in the worker: which tasks it runs,
whether a child can import them, and a child's exception as the worker sees it."""

from __future__ import annotations

import builtins
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

from lexigram.tasks.errors import ConfigurationError, TaskError
from lexigram.tasks.task import Task


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child process (as its ``__cause__``)."""

    def __str__(self) -> str:
        return str(self.args[0])


def importable_problem(fn: Callable[..., Any]) -> str | None:
    """Why a child could not import ``fn`` by module and qualname, or None."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return "it has no module and qualified name to be imported by"
    if "<" in qualname:  # <lambda>, <locals>
        return f"{qualname} is a lambda or is defined inside a function"
    if module == "__main__":
        return "it is defined in __main__, which a child process does not import as such"
    if module not in sys.modules:
        return f"its module {module!r} is not imported"
    return None


def runs_in_process(task: Task[Any, Any], default_executor: str) -> bool:
    """Whether the process executor runs ``task`` (as the worker decides per job)."""
    if task.executor is not None:
        return task.executor == "process"
    return not task.is_async and default_executor == "process"


def check_process_tasks(tasks: Iterable[Task[Any, Any]], default_executor: str) -> None:
    """Raise :class:`ConfigurationError` naming the process tasks a child could not import."""
    problems = [
        f"task {task.name!r}: {problem}"
        for task in tasks
        if runs_in_process(task, default_executor)
        if (problem := importable_problem(task.fn)) is not None
    ]
    if problems:
        raise ConfigurationError(
            "these tasks run in the process executor, which imports a task's function by "
            "module and qualified name in a child process, but cannot import them: "
            + "; ".join(problems)
            + " (give them executor='thread', or move them to a module)",
            problems=problems,
        )


def rebuild(answer: dict[str, Any]) -> Exception:
    """The child's exception as the parent can best make it (same type where importable)."""
    exc: Exception
    kind: Any = None
    module, name, message = answer["module"], answer["type"], answer["message"]
    with contextlib.suppress(Exception):
        found: Any = builtins if module == "builtins" else importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        kind = found
    if isinstance(kind, type) and issubclass(kind, Exception):
        exc = kind.__new__(kind)
        exc.args = (message,)
        with contextlib.suppress(Exception):
            str(exc)  # a class whose __str__ needs its own attributes
            exc.__cause__ = RemoteTraceback(answer["traceback"])
            return exc
    exc = TaskError(f"{module}.{name}: {message}")
    exc.__cause__ = RemoteTraceback(answer["traceback"])
    return exc
