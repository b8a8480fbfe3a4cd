"""The frozen records of the configuration (hapolicy.base.frozen): what a frozen dataclass gave."""

from __future__ import annotations

import pytest

from hapolicy.base import frozen
from hapolicy.config.records import Config, Service

COUNTER = iter(range(100))


@frozen.frozen
class Point:
    x: int
    y: int = 2
    tag: str = "p"
    made: int = frozen.factory(lambda: next(COUNTER))


def test_fields_by_position_or_name_with_defaults():
    p = Point(1)
    assert (p.x, p.y, p.tag) == (1, 2, "p")
    assert Point(1, 3, tag="q").y == 3 and Point(x=4).x == 4
    assert frozen.fields(Point) == ("x", "y", "tag", "made")
    assert frozen.default_of(Point, "y") == 2
    with pytest.raises(KeyError):
        frozen.default_of(Point, "x")


def test_a_factory_makes_each_default_anew():
    first, second = Point(1), Point(1)
    assert second.made == first.made + 1
    assert not isinstance(getattr(Point, "made", None), type(frozen.factory(int)))


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1, 2, 3, 4, 5), {}), ((1,), {"x": 2}),
                                              ((1,), {"z": 3})])
def test_wrong_arguments_are_type_errors(args, kwargs):
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="'b'"):
        @frozen.frozen
        class Bad:
            a: int = 1
            b: int


def test_no_assignment_or_deletion():
    p = Point(1)
    with pytest.raises(AttributeError):
        p.x = 5
    with pytest.raises(AttributeError):
        p.new = 5
    with pytest.raises(AttributeError):
        del p.x
    assert p.x == 1


def test_equality_hash_repr_and_replace():
    a, b = Point(1, made=0), Point(1, made=0)
    assert a == b and hash(a) == hash(b) and a != Point(2, made=0)
    assert a != (1, 2, "p", 0)
    assert repr(a) == "Point(x=1, y=2, tag='p', made=0)"
    c = frozen.replace(a, y=9)
    assert (c.x, c.y, c.made) == (1, 9, 0) and a.y == 2
    with pytest.raises(TypeError, match="'nope'"):
        frozen.replace(a, nope=1)


def test_the_configuration_is_made_of_them():
    service = Service("A", "127.0.0.1", 10023)
    config = Config(services=(service,))
    assert config.workers >= 1 and config.default_action == "dunno"
    assert frozen.replace(config, cooldown=5.0).cooldown == 5.0
    assert {service: 1}[Service("A", "127.0.0.1", 10023)] == 1
    with pytest.raises(AttributeError):
        config.cooldown = 1.0  # type: ignore[misc]
