"""Frozen records: what a frozen dataclass gives the configuration, without its import.

`@frozen` turns a class whose body annotates fields (with defaults or not, in order) into an
immutable record: an `__init__` taking the fields by position or name, equality and hashing
by value, a `repr`, and `AttributeError` on any assignment. `factory(f)` as a default calls f
for each new record; `fields(cls)` and `default_of(cls, name)` tell the fields and their
defaults; `replace(record, **changes)` makes a changed copy.

Why not `dataclasses`: spawn mode starts a new interpreter per SMTP connection, and importing
dataclasses (it imports inspect, ast, dis and tokenize) and generating the methods of the
configuration's classes cost about 7 ms of a start of about 40. These records are made once
per process, so a generic `__init__` is fast enough.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")


class FrozenError(AttributeError):
    """An assignment to a field of a frozen record."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


_MISSING = object()


def factory(make: Callable[[], Any]) -> Any:
    """A default made anew for each record by calling make()."""
    return _Factory(make)


def _fields_of(cls: type) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The annotated field names of cls's own body, in order, and their defaults."""
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 (the class own)
    defaults = {}
    for name in names:
        value = cls.__dict__.get(name, _MISSING)
        if value is not _MISSING:
            defaults[name] = value
            if isinstance(value, _Factory):
                delattr(cls, name)  # the class attribute would read as the factory
        elif defaults:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one "
                            "with a default")
    return names, defaults


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = self.__class__
    names, defaults = cls._frozen_fields, cls._frozen_defaults
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, {len(args)} given")
    values = self.__dict__
    for name, value in zip(names, args):
        values[name] = value
    for name, value in kwargs.items():
        if name not in cls._frozen_known or name in values:
            raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {name!r}")
        values[name] = value
    for name in names:
        if name not in values:
            default = defaults.get(name, _MISSING)
            if default is _MISSING:
                raise TypeError(f"{cls.__name__}() missing argument {name!r}")
            values[name] = default.make() if isinstance(default, _Factory) else default


def _setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenError(f"cannot assign to field {name!r} of a frozen {self.__class__.__name__}")


def _delattr(self: Any, name: str) -> None:
    raise FrozenError(f"cannot delete field {name!r} of a frozen {self.__class__.__name__}")


def _values(self: Any) -> tuple:
    values = self.__dict__
    return tuple(values[n] for n in self.__class__._frozen_fields)


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _repr(self: Any) -> str:
    values = self.__dict__
    return (f"{self.__class__.__name__}("
            + ", ".join(f"{n}={values[n]!r}" for n in self.__class__._frozen_fields) + ")")


_METHODS = {"__init__": _init, "__setattr__": _setattr, "__delattr__": _delattr,
            "__eq__": _eq, "__hash__": _hash, "__repr__": _repr}


def frozen(cls: type[T]) -> type[T]:
    """Make cls a frozen record of the fields its body annotates (see the module doc)."""
    names, defaults = _fields_of(cls)
    cls._frozen_fields = names  # type: ignore[attr-defined]
    cls._frozen_known = frozenset(names)  # type: ignore[attr-defined]
    cls._frozen_defaults = defaults  # type: ignore[attr-defined]
    for name, method in _METHODS.items():
        setattr(cls, name, method)
    return cls


def fields(cls: type) -> tuple[str, ...]:
    """The field names of a frozen record class, in order."""
    return cls._frozen_fields  # type: ignore[attr-defined, no-any-return]


def default_of(cls: type, name: str) -> Any:
    """The default of a field (a factory's default is made anew); KeyError without one."""
    default = cls._frozen_defaults[name]  # type: ignore[attr-defined]
    return default.make() if isinstance(default, _Factory) else default


def replace(record: T, **changes: Any) -> T:
    """A copy of record with the given fields changed."""
    cls = record.__class__
    unknown = set(changes) - set(fields(cls))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {min(unknown)!r}")
    return cls(**{**{n: record.__dict__[n] for n in fields(cls)}, **changes})
