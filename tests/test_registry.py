import pytest

from cnnlab.errors import UserError
from cnnlab.registry import Registry


def test_register_and_lookup():
    r = Registry("thing")

    @r.register("a", summary="the a")
    def a():
        return 1

    assert r.get("a") is a
    assert r.entry("a").summary == "the a"
    assert "a" in r and "b" not in r


def test_register_twice_raises():
    r = Registry("thing")
    r.add("a", object())
    with pytest.raises(ValueError, match="already registered"):
        r.add("a", object())


def test_unknown_name_lists_valid_names():
    r = Registry("optimizer")
    r.add("sgd", object())
    r.add("adam", object())
    with pytest.raises(UserError) as e:
        r.get("adamm", "exp.toml at train.optimizer")
    msg = str(e.value)
    assert "adamm" in msg and "sgd" in msg and "adam" in msg and "exp.toml" in msg


def test_prefix_entries_take_a_suffix():
    r = Registry("model")
    r.add("torchvision:", "tv", prefix=True)
    assert r.get("torchvision:resnet18") == "tv"
    with pytest.raises(UserError):
        r.get("torchvision:")
    assert "torchvision:<name>" in r.names()
