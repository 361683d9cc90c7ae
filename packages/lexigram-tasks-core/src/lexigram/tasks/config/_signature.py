"""Checking configuration keys against the signature of the factory they go to.

A backend's (or result store's) constructor keywords are its configuration
keys, so a pydantic model is built from the signature: unknown keys, missing
required keys and wrong value types of any backend, third-party ones
included, fail at load time with their key path.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict


class OptionsValidator:
    """Validates the keyword arguments of one factory."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory
        self.accepted: list[str] = []
        self.required: list[str] = []
        self.open = False  # the factory takes **kwargs
        self._aliases: dict[str, str] = {}
        self.model = self._build()

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options, converted to the annotated types (raises ``pydantic.ValidationError``).

        Only keys present in ``options`` are returned, so the factory keeps
        its own defaults for the rest.
        """
        instance = self.model.model_validate(dict(options))
        values = {
            alias: getattr(instance, name)
            for name, alias in self._aliases.items()
            if name in instance.model_fields_set
        }
        extra = instance.model_extra or {}
        values.update(extra)
        return values

    def _build(self) -> type[BaseModel]:
        target = self.factory
        function: Any = target.__init__ if inspect.isclass(target) else target
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # no introspectable signature: accept anything
            self.open = True
            return _open_model()
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # unresolvable annotations: check names, not types
            hints = {}
        fields: dict[str, Any] = {}
        for index, param in enumerate(signature.parameters.values()):
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.open = True
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                continue
            # Synthetic field names with the parameter as alias: a parameter may be
            # called e.g. ``schema`` or ``copy`` without clashing with BaseModel.
            field_name = f"p{index}"
            self._aliases[field_name] = param.name
            self.accepted.append(param.name)
            required = param.default is inspect.Parameter.empty
            if required:
                self.required.append(param.name)
            fields[field_name] = (
                hints.get(param.name, Any),
                pydantic.Field(... if required else None, alias=param.name),
            )
        config = ConfigDict(
            extra="allow" if self.open else "forbid",
            arbitrary_types_allowed=True,
            populate_by_name=False,
        )
        name = f"{getattr(target, '__name__', 'factory')}Options"
        try:
            return pydantic.create_model(name, __config__=config, **fields)
        except Exception:  # a type pydantic cannot check: fall back to names only
            loose: dict[str, Any] = {key: (Any, info) for key, (_, info) in fields.items()}
            model: type[BaseModel] = pydantic.create_model(name, __config__=config, **loose)
            return model


@functools.cache
def _open_model() -> type[BaseModel]:
    return pydantic.create_model("AnyOptions", __config__=ConfigDict(extra="allow"))
