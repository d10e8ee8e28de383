"""[transfer] on scikit-learn's digits: a source run on classes 0-4, transfer runs on classes 5-9."""

import json
import subprocess
import sys

import pytest
import torch

import cnnlab
from cnnlab.lifecycle import RunStatus, write_status
from cnnlab.train import load_checkpoint
from cnnlab.errors import UserError

MODEL = {"name": "cnn", "channels": [8, 16], "hidden": [32]}


def _cfg(name, classes, epochs=2, **transfer):
    cfg = {
        "name": name, "seed": 3,
        "data": {"dataset": "digits", "classes": classes, "test_fraction": 0.2, "val_fraction": 0.1},
        "model": dict(MODEL),
        "train": {"epochs": epochs, "batch_size": 64, "lr": 3e-3, "device": "cpu"},
        "diagnostics": {"stats_every": 0},
    }
    if transfer:
        cfg["transfer"] = transfer
    return cfg


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return cnnlab.run(_cfg("source", [0, 1, 2, 3, 4]), runs_dir=tmp_path_factory.mktemp("src"), quiet=True)


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_freeze_all_new_head_keeps_frozen_weights_and_bn_buffers_bitwise(source, tmp_path, capsys):
    r = cnnlab.run(_cfg("target", [5, 6, 7, 8, 9], init_from=str(source.dir), freeze="all", new_head=True),
                   runs_dir=tmp_path)
    out = capsys.readouterr().out
    assert "transfer: parameters and buffers by module" in out and "frozen parameters" in out
    src, dst = _weights(source.dir), _weights(r.dir)
    frozen = [k for k in dst if not k.startswith("head.out.")]
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("num_batches_tracked") for k in frozen)
    for k in frozen:  # every frozen parameter and BatchNorm buffer: bitwise the source's
        assert torch.equal(src[k], dst[k]), k
    # The new head trained (and is not the source's 5-class layer).
    assert dst["head.out.weight"].shape[0] == 5
    init = cnnlab.run(_cfg("t0", [5, 6, 7, 8, 9], epochs=1, init_from=str(source.dir), freeze="all", new_head=True),
                      overrides={"train.lr": 1e-9}, runs_dir=tmp_path / "x", quiet=True)
    assert not torch.equal(_weights(init.dir)["head.out.weight"], dst["head.out.weight"])
    env = json.loads((r.dir / "env.json").read_text())["transfer"]
    assert env["source_run"] == str(source.dir.resolve()) and "git_commit" in env["source_env"]
    assert env["frozen_parameters"] > 0 and env["trainable_parameters"] == 32 * 5 + 5


def test_without_new_head_a_class_mismatch_suggests_new_head(source, tmp_path):
    with pytest.raises(UserError, match="new_head"):
        cnnlab.run(_cfg("t", [5, 6, 7], init_from=str(source.dir)), runs_dir=tmp_path, quiet=True)


def test_unfreeze_patterns_and_shape_mismatch_in_table(source, tmp_path, capsys):
    cfg = _cfg("t", [5, 6, 7, 8, 9], epochs=1, init_from=str(source.dir), freeze="all",
               unfreeze=["features.1*", "head*"], new_head=True)
    cfg["model"]["hidden"] = [16]  # head.fc0 has another shape than the source's
    r = cnnlab.run(cfg, runs_dir=tmp_path)
    out = capsys.readouterr().out
    assert "skipped for shape mismatch: head.fc0.weight" in out
    src, dst = _weights(source.dir), _weights(r.dir)
    assert torch.equal(src["features.0.conv.weight"], dst["features.0.conv.weight"])
    assert torch.equal(src["features.0.bn.running_mean"], dst["features.0.bn.running_mean"])
    assert not torch.equal(src["features.1.conv.weight"], dst["features.1.conv.weight"])
    assert not torch.equal(src["features.1.bn.running_mean"], dst["features.1.bn.running_mean"])
    env = json.loads((r.dir / "env.json").read_text())["transfer"]
    assert "head.fc0.weight" in env["shape_mismatch"]


def test_pattern_matching_nothing_lists_module_names(source, tmp_path):
    with pytest.raises(UserError, match=r"matches no module.*features\.0\.conv"):
        cnnlab.run(_cfg("t", [5, 6, 7, 8, 9], init_from=str(source.dir), freeze=["backbone.*"], new_head=True),
                   runs_dir=tmp_path, quiet=True)


@pytest.mark.slow
def test_init_from_a_non_run_path_exits_2(tmp_path):
    (tmp_path / "notarun").mkdir()
    cfg = tmp_path / "t.toml"
    cfg.write_text('[data]\ndataset = "digits"\n[train]\nepochs = 1\ndevice = "cpu"\n'
                   f'[transfer]\ninit_from = "{tmp_path / "notarun"}"\n')
    p = subprocess.run([sys.executable, "-m", "cnnlab", "run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "not a cnnlab run directory" in p.stderr
    p = subprocess.run([sys.executable, "-m", "cnnlab", "run", str(cfg), "--runs-dir", str(tmp_path / "runs"), "-q",
                        "--set", f"transfer.init_from='{tmp_path / 'missing'}'"], capture_output=True, text=True)
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_pretrained_by_name_offline_names_the_file_or_uses_weights_path(source, tmp_path):
    cfg = _cfg("t", [5, 6, 7, 8, 9], epochs=1, init_from="torchvision:resnet18", new_head=True)
    cfg["data"]["download"] = False
    with pytest.raises(UserError, match=r"download\.pytorch\.org.*weights_path"):
        cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    # weights_path: a plain state_dict (here the source run's, under other names: matched by suffix).
    sd = {k.split(".", 1)[1] if k.startswith("features.") else k: v for k, v in _weights(source.dir).items()}
    torch.save(sd, tmp_path / "w.pt")
    cfg["transfer"].update(init_from="cnn", weights_path=str(tmp_path / "w.pt"), freeze="features")
    r = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    assert torch.equal(_weights(r.dir)["features.0.conv.weight"], _weights(source.dir)["features.0.conv.weight"])


def test_head_lr_and_backbone_lr_groups(source, tmp_path):
    from cnnlab.experiment import validate_config
    from cnnlab.models import build_model
    from cnnlab.train.optim import build_optimizer

    cfg = validate_config(_cfg("t", [5, 6], head_lr=0.5, backbone_lr=0.01, freeze="features",
                               **{"init_from": str(source.dir), "new_head": True}))
    model = build_model(cfg.model, (1, 8, 8), 2)
    opt = build_optimizer(model, cfg.train, cfg.transfer)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["other"] == 0.01 and lrs["head"] == 0.5
    n_head = sum(p.numel() for g in opt.param_groups if g["name"].startswith("head") for p in g["params"])
    assert n_head == sum(p.numel() for p in model.head.parameters())
    # With the BatchNorm groups as well: scaled within each part.
    cfg2 = validate_config({**_cfg("t", [5, 6], head_lr=0.5, backbone_lr=0.01), "train": {"bn_bias_lr_scale": 4.0, "lr": 0.1}})
    opt2 = build_optimizer(model, cfg2.train, cfg2.transfer)
    lrs2 = {g["name"]: g["lr"] for g in opt2.param_groups}
    assert lrs2["bn_bias"] == pytest.approx(0.04) and lrs2["head"] == 0.5 and lrs2["bn_weight"] == 0.01
    # In a run: the logged lr is the backbone's.
    r = cnnlab.run(_cfg("t", [5, 6, 7, 8, 9], epochs=1, init_from=str(source.dir), new_head=True, head_lr=0.01,
                        backbone_lr=1e-4), runs_dir=tmp_path, quiet=True)
    assert r.history[0]["lr"] == 1e-4


def test_unfreeze_schedule_unfreezes_at_the_given_epoch(source, tmp_path):
    r = cnnlab.run(_cfg("t", [5, 6, 7, 8, 9], epochs=3, init_from=str(source.dir), freeze="all", new_head=True,
                        unfreeze_schedule=[{"epoch": 3, "modules": ["features.1"]}]),
                   runs_dir=tmp_path, quiet=True)
    src = _weights(source.dir)
    ck = r.dir / "checkpoints"
    # every = 0: best/last only; epoch 2's weights are rebuilt from a 2-epoch run of the same config.
    r2 = cnnlab.run(r.dir / "config.toml", overrides={"train.epochs": 2}, runs_dir=tmp_path / "b", quiet=True)
    after2, after3 = _weights(r2.dir), load_checkpoint(ck / "last.pt")["model"]
    assert torch.equal(after2["features.1.conv.weight"], src["features.1.conv.weight"])
    assert not torch.equal(after3["features.1.conv.weight"], src["features.1.conv.weight"])
    assert torch.equal(after3["features.0.conv.weight"], src["features.0.conv.weight"])


def test_models_show_prints_module_names():
    from cnnlab.cli import main

    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["models", "--show", "seed000_net1"]) == 0
    assert "features.2.conv" in buf.getvalue() and "head.out" in buf.getvalue()


def test_seed000_example_patterns_fit_the_model():
    from pathlib import Path

    from cnnlab.experiment import load_config
    from cnnlab.models import build_model
    from cnnlab.train.transfer import apply_transfer

    ex = Path(__file__).resolve().parents[2] / "examples" / "seed000_transfer.toml"
    cfg = load_config(ex, ["transfer.init_from=\"\""])
    assert cfg.data.dataset == "cifar100" and cfg.data.classes == list(range(1, 11)) and cfg.transfer.new_head
    model = build_model(cfg.model, (3, 32, 32), 10)
    apply_transfer(model, cfg.transfer, quiet=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"features.2.conv.weight", "features.2.conv.bias", "head.out.weight", "head.out.bias"}


def test_resume_with_unfreeze_schedule_ends_like_an_uninterrupted_run(source, tmp_path):
    import shutil

    cfg = _cfg("t", [5, 6, 7, 8, 9], epochs=3, init_from=str(source.dir), freeze="all", new_head=True,
               head_lr=0.01, unfreeze_schedule=[{"epoch": 2, "modules": ["features.1*"]}])
    cfg["checkpoint"] = {"every": 1}
    cfg["train"]["early_stopping"] = {"restore_best": False}
    full = cnnlab.run(cfg, runs_dir=tmp_path / "a", quiet=True)
    cut = tmp_path / "cut"
    shutil.copytree(full.dir, cut)
    shutil.copy(cut / "checkpoints" / "epoch-0001.pt", cut / "checkpoints" / "last.pt")
    write_status(cut, RunStatus.RUNNING)  # as a SIGKILL leaves it: "running", its process gone
    cnnlab.resume(cut, quiet=True)
    a, b = _weights(full.dir), _weights(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance"])
def test_freezing_keeps_only_norm_layers_with_running_statistics_in_eval_mode(norm):
    from cnnlab.config import TransferConfig
    from cnnlab.models import NORM_TYPES, build_model
    from cnnlab.train.transfer import apply_transfer

    model = build_model({**MODEL, "norm": norm, "norm_groups": 4}, (1, 8, 8), 5)
    freezing = apply_transfer(model, TransferConfig(freeze="features"), load=False, quiet=True).freezing
    norms = [m for m in model.features.modules() if isinstance(m, NORM_TYPES)]
    assert len(norms) == 2 and not any(p.requires_grad for m in norms for p in m.parameters())
    # BatchNorm's running statistics must not move; group, layer and instance norm have none.
    assert freezing.bn_eval == (norms if norm == "batch" else [])
    freezing.set_trainable(model, ["features.1"], True)
    assert freezing.bn_eval == (norms[:1] if norm == "batch" else [])


def test_frozen_instance_norm_with_running_statistics_stays_in_eval_mode():
    from cnnlab.train.transfer import Freezing

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.InstanceNorm2d(2, affine=True, track_running_stats=True),
                                torch.nn.GroupNorm(1, 2))
    for p in model.parameters():
        p.requires_grad_(False)
    f = Freezing()
    f.refresh(model)
    assert f.bn_eval == [model[1]]


def test_freeze_features_with_group_norm_keeps_them_bitwise(tmp_path, capsys):
    gn = {"model": {**MODEL, "norm": "group", "norm_groups": 4}}
    src = cnnlab.run({**_cfg("gn_source", [0, 1, 2, 3, 4], epochs=1), **gn}, runs_dir=tmp_path / "s", quiet=True)
    r = cnnlab.run({**_cfg("gn_target", [5, 6, 7, 8, 9], epochs=2, init_from=str(src.dir), freeze="features",
                           new_head=True), **gn}, runs_dir=tmp_path / "t")
    assert "0 frozen BatchNorm layers" in capsys.readouterr().out
    before, after = _weights(src.dir), _weights(r.dir)
    features = [k for k in after if k.startswith("features.")]
    assert any(k.endswith(".norm.weight") for k in features) and not any("running" in k for k in features)
    for k in features:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["head.fc0.weight"], after["head.fc0.weight"])
