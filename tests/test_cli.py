"""Every bad input exits 2 with one clear paragraph and no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.epochs=1", "--set", "train.device='cpu'", "-q"]


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def run_main(capsys, args):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def bad_folder(tmp_path, kind):
    root = tmp_path / kind
    root.mkdir()
    if kind == "unreadable":
        from PIL import Image

        for c in ("a", "b"):
            (root / c).mkdir()
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
        (root / "b" / "broken.png").write_bytes(b"not a png at all")
    return root


CASES = {
    "unknown section": ("[bogus]\nx = 1\n", [], ["bogus"]),
    "unknown key": ("[train]\nepocs = 1\n", [], ["train.epocs", "unknown key"]),
    "wrong type": ("[train]\nlr = \"fast\"\n", [], ["train.lr"]),
    "negative epochs": ("", ["negative"], ["train.epochs"]),
    "unknown model": ("[model]\nname = \"vgg99\"\n", [], ["vgg99", "cnn", "mlp"]),
    "unknown data set": ("[data]\ndataset = \"svhn\"\n", [], ["svhn", "digits", "cifar10"]),
    "unknown optimizer": ("[train]\noptimizer = \"lion\"\n", [], ["lion", "sgd", "adam"]),
    "toml syntax": ("[train\n", [], ["TOML"]),
    "class index out of range": ("[data]\ndataset = \"digits\"\nclasses = [0, 12]\n", [], ["12"]),
    "per_class above what exists": ("[data]\ndataset = \"digits\"\nper_class = 5000\n", [], ["5000"]),
    "missing data files": ("[data]\ndataset = \"mnist\"\ndownload = false\n", ["root"], ["train-images-idx3-ubyte"]),
    "empty folder": ("[data]\ndataset = \"imagefolder\"\n", ["empty"], ["empty"]),
    "unreadable image": ("[data]\ndataset = \"imagefolder\"\n", ["unreadable"], ["broken.png"]),
    "bad override": ("", ["override"], ["key.path=value"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, case):
    text, extra, needles = CASES[case]
    args = ["run", write(tmp_path, text), "--runs-dir", str(tmp_path / "runs"), *FAST]
    if "root" in extra:
        args += ["--set", f"data.root='{tmp_path / 'nowhere'}'"]
    if "empty" in extra:
        args += ["--set", f"data.path='{bad_folder(tmp_path, 'empty')}'"]
    if "unreadable" in extra:
        args += ["--set", f"data.path='{bad_folder(tmp_path, 'unreadable')}'"]
    if "negative" in extra:
        args += ["--set", "train.epochs=-3"]
    if "override" in extra:
        args += ["--set", "train.lr"]
    code, out, err = run_main(capsys, args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run_main(capsys, ["run", str(tmp_path / "nope.toml")])
    assert code == 2 and "does not exist" in err


def test_resume_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_main(capsys, ["resume", str(tmp_path)])
    assert code == 2 and "not a cnnlab run directory" in err
    code, _, err = run_main(capsys, ["resume", str(tmp_path / "missing")])
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_real_process_exit_status_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cnnlab", "run", write(tmp_path, "[train]\nepochs = -1\n")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "train.epochs" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cnnlab", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2


def test_listing_commands(tmp_path, capsys):
    code, out, _ = run_main(capsys, ["models"])
    assert code == 0 and "cnn" in out and "seed000_net1" in out and "channels" in out
    code, out, _ = run_main(capsys, ["datasets"])
    assert code == 0 and all(n in out for n in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"))
    code, out, _ = run_main(capsys, ["runs", "--runs-dir", str(tmp_path)])
    assert code == 0 and "no runs" in out


def test_run_then_list_evaluate_predict_through_the_cli(tmp_path, capsys):
    exp = write(tmp_path, '[data]\ndataset = "digits"\n[model]\nname = "mlp"\nhidden_size = 32\n')
    code, out, err = run_main(capsys, ["run", exp, "--runs-dir", str(tmp_path / "runs"), "--set", "train.epochs=2",
                                       "--set", "name=cli"])
    assert code == 0, err
    assert "epoch   2/2" in out and "precision" in out
    run_dir = next((tmp_path / "runs" / "cli").iterdir())
    code, out, _ = run_main(capsys, ["runs", "--runs-dir", str(tmp_path / "runs")])
    assert code == 0 and "cli" in out and "digits" in out
    code, out, _ = run_main(capsys, ["evaluate", str(run_dir), "--split", "test", "--json"])
    assert code == 0 and '"accuracy"' in out and "saved:" not in out  # --json: stdout is the JSON alone
    json.loads(out)
    code, out, _ = run_main(capsys, ["evaluate", str(run_dir), "--split", "test"])
    saved = out.strip().splitlines()[-1].removeprefix("saved: ")
    assert code == 0 and Path(saved).parent == run_dir / "evaluations" and Path(saved).is_file()
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("L", (8, 8), 128).save(img)
    code, out, _ = run_main(capsys, ["predict", str(run_dir), str(img)])
    assert code == 0 and "x.png" in out
    code, _, err = run_main(capsys, ["predict", str(run_dir), str(tmp_path / "missing.png")])
    assert code == 2 and "missing.png" in err


@pytest.mark.slow
def test_a_reader_that_goes_away_gets_no_traceback():
    """`cnnlab datasets | head -0`: the pipe is closed before the table is written. The command ends
    with 141 (128 + SIGPIPE, as a program killed by the signal) and says nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "cnnlab", "datasets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=REPO)
    p.stdout.close()  # before the command has imported anything: its first write fails
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
