"""The one registry of training methods: ``--method NAME`` looks its object up here."""

from __future__ import annotations

from unipelt.errors import UniPELTError
from unipelt.methods.base import Method

_METHODS: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Make ``method`` available as ``--method method.name`` (in the CLI's choices, runs, tuning, eval)."""
    if method.name in _METHODS and not replace:
        raise UniPELTError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    """The method registered as ``name``; one clear error naming the choices otherwise."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise UniPELTError(f"unknown method {name!r}; choose one of: {', '.join(_METHODS)}") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (``ft``, the presets' table order, then others)."""
    return tuple(_METHODS)
