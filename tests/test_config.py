import tomllib

import pytest

from cnnlab.config import ExperimentConfig, parse_override
from cnnlab.experiment import dumps_toml, load_config, validate_config
from cnnlab.errors import UserError


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_sections(tmp_path):
    cfg = load_config(write(tmp_path, 'name = "x"\n[train]\nepochs = 3\n'))
    assert cfg.name == "x" and cfg.train.epochs == 3
    assert cfg.data.dataset == "digits" and cfg.train.early_stopping.patience == 0
    assert cfg.checkpoint.every == 0
    assert cfg.log.every_steps == 0  # per-step logging is off unless asked for


def test_scheduler_and_loss_shorthand(tmp_path):
    cfg = load_config(write(tmp_path, '[train]\nscheduler = "cosine"\nloss = "focal"\n'))
    assert cfg.train.scheduler.name == "cosine" and cfg.train.loss.name == "focal"


@pytest.mark.parametrize("text, needles", [
    ("[bogus]\nx = 1\n", ["bogus", "unknown key"]),
    ("[train]\nepochz = 3\n", ["train.epochz", "unknown key"]),
    ("[train]\nepochs = \"ten\"\n", ["train.epochs", "integer"]),
    ("[train]\nepochs = -1\n", ["train.epochs", "greater than or equal to 1"]),
    ("[data.augment]\nhflip = 3\n", ["data.augment.hflip"]),
    ("[train]\noptimizer = \"adamm\"\n", ["adamm", "sgd", "adamw", "train.optimizer"]),
    ("[model]\nname = \"nope\"\n", ["nope", "cnn", "mlp", "resnet18"]),
    ("[data]\ndataset = \"imagenet21k\"\n", ["imagenet21k", "cifar10", "digits"]),
    ("[model]\nname = \"cnn\"\nchanels = [8]\n", ["model.chanels", "channels"]),
    ("[train.scheduler]\nname = \"step\"\nstep = 3\n", ["train.scheduler.step", "step_size"]),
    ("[train]\nscheduler = \"nope\"\n", ["nope", "cosine", "plateau"]),
    ("[train]\nloss = \"hinge\"\n", ["hinge", "cross_entropy", "focal"]),
    ('name = "a/b"\n', ["name", "path separators"]),
    ("[log]\nevery_steps = -1\n", ["log.every_steps", "greater than or equal to 0"]),
])
def test_bad_config_names_file_key_and_allowed(tmp_path, text, needles):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert "exp.toml" in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_file_and_syntax_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="TOML syntax error"):
        load_config(write(tmp_path, "[train\nepochs = 3\n"))


def test_overrides_parse_as_toml(tmp_path):
    assert parse_override("train.lr=0.01") == (["train", "lr"], 0.01)
    assert parse_override("data.classes=[1, 2]") == (["data", "classes"], [1, 2])
    assert parse_override("model.name=mlp") == (["model", "name"], "mlp")
    assert parse_override("train.early_stopping.restore_best=false")[1] is False
    cfg = load_config(write(tmp_path, '[train]\nscheduler = "cosine"\n'),
                      ["train.lr=0.5", "train.scheduler.eta_min=0.01", "model.name=mlp", "model.hidden_size=7"])
    assert cfg.train.lr == 0.5 and cfg.train.scheduler.name == "cosine"
    assert cfg.model.name == "mlp" and cfg.model.model_extra["hidden_size"] == 7
    with pytest.raises(UserError, match="key.path=value"):
        load_config(write(tmp_path, ""), ["train.lr"])
    with pytest.raises(UserError, match="train.epochs"):
        load_config(write(tmp_path, ""), ["train.epochs=0"])


def test_resolved_config_round_trips_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, '[model]\nname = "cnn"\nchannels = [4, 8]\n[train]\nscheduler = "step"\n'))
    text = dumps_toml(cfg)
    raw = tomllib.loads(text)
    # defaults of the model and scheduler entries are written out too
    assert raw["model"]["channels"] == [4, 8] and "activation" in raw["model"]
    assert raw["train"]["scheduler"]["step_size"] == 30
    again = validate_config(raw, "config.toml")
    assert dumps_toml(again) == text
    assert isinstance(again, ExperimentConfig)


def test_overrides_leave_the_callers_dict_unchanged():
    from cnnlab.config import apply_overrides

    raw = {"train": {"lr": 0.1, "scheduler": "cosine"}}
    out = apply_overrides(raw, {"train.lr": 0.5, "train.scheduler.t_max": 3, "data.augment.hflip": True})
    assert raw == {"train": {"lr": 0.1, "scheduler": "cosine"}}
    assert out["train"] == {"lr": 0.5, "scheduler": {"name": "cosine", "t_max": 3}} and out["data"]["augment"]["hflip"]
