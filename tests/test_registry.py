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


def _loader():
    return "data"


def test_a_declared_entry_is_listed_and_validated_before_its_module_binds_it():
    r = Registry("data set", require_declared=True)
    r.declare("toy", home=__name__, summary="a toy data set")
    assert "toy" in r and r.names() == ["toy"] and r.entry("toy").summary == "a toy data set"
    with pytest.raises(RuntimeError, match=f"importing {__name__} registers it"):
        r.get("toy")  # declared, not bound: a bug of the caller, not a UserError about the config
    r.add("toy", _loader)
    assert r.get("toy") is _loader
    with pytest.raises(ValueError, match="already registered"):
        r.add("toy", _loader)  # binding twice raises, as registering twice does
    with pytest.raises(ValueError, match="already registered"):
        r.declare("toy", home=__name__, summary="again")
    with pytest.raises(UserError, match="Valid data set names: toy"):
        r.get("toi")


def test_only_declared_names_bind_and_only_from_their_module():
    r = Registry("data set", require_declared=True)
    with pytest.raises(ValueError, match="not declared"):
        r.add("stray", _loader)  # a listing of the declarations would not show it
    r.declare("toy", home="cnnlab.data.sources", summary="a toy data set")
    with pytest.raises(ValueError, match="declared to live in cnnlab.data.sources"):
        r.add("toy", _loader)
    r.declare("other", home=__name__, summary="another")
    with pytest.raises(ValueError, match="binds the object only"):
        r.add("other", _loader, summary="a second summary")
