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


def test_augment_keys_parse_with_shorthands_and_per_class_tables(tmp_path):
    cfg = load_config(write(tmp_path, "[data.augment]\nrotation = 15\ntranslate = 0.1\nscale = [0.9, 1.1]\n"
                                      "brightness = 0.2\nerasing = 0.25\nmixup = 0.2\n"
                                      "[data.augment.per_class]\nship = { rotation = 20, hue = 0.1 }\n"))
    aug = cfg.data.augment
    assert aug.rotation == 15 and aug.translate == (0.1, 0.1) and aug.scale == (0.9, 1.1) and aug.mixup == 0.2
    assert aug.per_class["ship"].model_fields_set == {"rotation", "hue"}
    assert aug.cutmix == 0 and aug.vflip == 0 and aug.hue == 0  # the rest stays off


def test_augment_defaults_are_off():
    aug = ExperimentConfig().data.augment
    assert (aug.rotation, aug.shear, aug.brightness, aug.contrast, aug.saturation, aug.hue) == (0, 0, 0, 0, 0, 0)
    assert aug.translate == (0, 0) and aug.scale == (1, 1) and aug.per_class == {}
    assert (aug.grayscale, aug.vflip, aug.erasing, aug.mixup, aug.cutmix) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("text, needles", [
    ("rotation = 200\n", ["data.augment.rotation", "less than or equal to 180"]),
    ("hue = 0.6\n", ["data.augment.hue", "0.5"]),
    ("scale = [1.2, 0.8]\n", ["data.augment.scale", "low (1.2) is above high (0.8)"]),
    ("translate = [0.1, 2]\n", ["data.augment.translate.1", "less than or equal to 1"]),
    ("erasing_scale = [0, 0.3]\n", ["data.augment.erasing_scale.0", "greater than 0"]),
    ("brightness = \"lots\"\n", ["data.augment.brightness", "number"]),
    ("per_class = { ship = { mixup = 0.2 } }\n", ["data.augment.per_class.ship", "mixup is batch-level",
                                                 "rotation, translate"]),
    ("per_class = { ship = { cutmix = 1, hflip = true } }\n", ["cutmix is batch-level", "hflip is set for all"]),
    ("per_class = { ship = { rotaton = 20 } }\n", ["unknown key 'data.augment.per_class.ship.rotaton'"]),
    ("per_class = { ship = { rotation = -1 } }\n", ["data.augment.per_class.ship.rotation", "greater than"]),
])
def test_bad_augment_keys_name_the_key_path(tmp_path, text, needles):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, "[data.augment]\n" + text))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_per_class_tables_round_trip_with_only_their_own_keys(tmp_path):
    cfg = load_config(write(tmp_path, "[data.augment]\nrotation = 10\n[data.augment.per_class]\n"
                                      "cat = { brightness = 0.3 }\ndog = { rotation = 0 }\n"))
    raw = tomllib.loads(dumps_toml(cfg))
    assert raw["data"]["augment"]["per_class"] == {"cat": {"brightness": 0.3}, "dog": {"rotation": 0.0}}
    again = validate_config(raw, "config.toml")
    assert again.data.augment.per_class["cat"].model_fields_set == {"brightness"}  # cat keeps the global rotation
    assert dumps_toml(again) == dumps_toml(cfg)
