from dataclasses import dataclass
from typing import Literal

import pytest

from boltzkit.core.config import override, parse_assignments


@dataclass(frozen=True)
class Cfg:
    steps: int = 10
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"
    flag: bool = False
    levels: tuple[int, ...] = (1, 2)
    clip: float | None = None


def test_override_types_values_by_field():
    c = override(Cfg(), ["steps=1e3", "lr=0.5", "kind=b", "flag=true", "levels=3,4", "clip=none"])
    assert c == Cfg(steps=1000, lr=0.5, kind="b", flag=True, levels=(3, 4), clip=None)
    assert override(Cfg(), ["clip=2"]).clip == 2.0


def test_unknown_key_lists_valid_ones():
    with pytest.raises(KeyError, match="valid keys: steps=10"):
        override(Cfg(), ["stpes=3"])


@pytest.mark.parametrize("bad", ["steps=ten", "kind=c", "flag=maybe"])
def test_bad_values_say_what_is_valid(bad):
    with pytest.raises(ValueError):
        override(Cfg(), [bad])


def test_assignment_needs_equals():
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["steps"])
