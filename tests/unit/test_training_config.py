"""TrainConfig is declared once: its choice lists agree with the torch code, its flags are
generated from it (defaults shown), and parsing them never loads torch."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import config
from training.config import AugmentConfig, TrainConfig
from training.losses import build_loss
from training.models import ARCHITECTURES
from training.optim import build_optimizer, lr_factor
from twinstream import errors
from twinstream.cli import build_parser
from twinstream.cli.commands.train import config_from_args

ROOT = Path(__file__).resolve().parents[2]


def test_choice_lists_agree_with_what_the_torch_modules_build():
    assert tuple(ARCHITECTURES) == config.ARCHS
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name in config.LOSSES:
        assert build_loss(name, 8).name == name
    for mining in config.MINING:
        assert build_loss("triplet", 8, mining=mining).mining == mining
    for name in config.OPTIMIZERS:
        build_optimizer(name, params, 0.1, 0.0)
    for name in config.SCHEDULES:
        assert 0 <= lr_factor(0.5, name) <= 1


def parse(*argv):
    return build_parser().parse_args(["train", "--data", "D", "--out", "O", *argv])


def test_every_field_has_a_flag_and_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls in (TrainConfig, AugmentConfig):
        for f in dataclasses.fields(cls):
            if f.name == "augment":
                continue
            flag = config.flag_of(f)
            assert flag in text, flag
            if not f.metadata.get("required"):
                after = text.split(flag, 2)[-1][:400]
                assert "(default: " in after, flag
    assert "--time-budget MINUTES" in text and "(default: auto)" in text


def test_flags_not_given_stay_automatic_and_given_ones_win():
    cfg = config_from_args(parse())
    assert cfg.data == "D" and cfg.channels is None and cfg.loss is None
    assert set(cfg.unresolved()) >= {"channels", "invert", "image_size", "loss", "epochs"}
    assert cfg.augment == AugmentConfig() and cfg.lr == 3e-3
    cfg = config_from_args(parse("--channels", "1", "--no-invert", "--loss", "triplet",
                                 "--time-budget", "1.5", "--rotate", "5", "--quarter-turns"))
    assert (cfg.channels, cfg.invert, cfg.loss, cfg.quarter_turns) == (1, False, "triplet", True)
    assert cfg.time_budget_s == pytest.approx(90.0) and cfg.augment.rotate_deg == 5
    assert config_from_args(parse("--no-augment")).augment.active is False
    with pytest.raises(SystemExit):
        parse("--arch", "vit")


def test_check_refuses_unresolved_and_bad_values():
    with pytest.raises(errors.InputError, match="unresolved automatic options"):
        TrainConfig.automatic(data="D", out="O").check()
    ready = TrainConfig.automatic(data="D", out="O").with_fallbacks()
    assert ready == TrainConfig(data="D", out="O")  # code keeps the declared defaults
    ready.check()
    with pytest.raises(errors.InputError, match="--loss must be one of"):
        dataclasses.replace(ready, loss="arcface").check()
    with pytest.raises(errors.InputError, match="--warmup must be in"):
        dataclasses.replace(ready, warmup=1.5).check()


def test_help_never_loads_torch():
    probe = ("import sys\nsys.modules['torch'] = None\n"
             "from twinstream.cli import main\n"
             "for argv in (['--help'], ['train', '--help'], ['evaluate', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit as exc:\n"
             "        assert exc.code == 0, argv\n"
             "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--time-budget" in result.stdout


def test_exit_codes_come_from_the_error_classes():
    """No exit code is written as a literal in the CLI: each comes from its error class."""
    import re

    for path in sorted((ROOT / "twinstream/cli").rglob("*.py")):
        text = path.read_text()
        assert not re.search(r"\breturn [1-9][0-9]*\b", text), path
        assert not re.search(r"exit\([1-9]", text), path
        for code in (errors.InternalError.exit_code, errors.Interrupted.exit_code,
                     errors.ServiceUnavailable.exit_code):
            assert f", {code})" not in text and f" {code}\n" not in text, path


@pytest.mark.parametrize("argv", [["train", "--data", "x", "--arch", "nope"], ["nosuch"],
                                  ["index"], ["query", "--k", "many"]])
def test_a_command_line_the_parser_refuses_is_one_line_and_exit_2(argv, capsys):
    from twinstream.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == errors.InputError.exit_code
    assert err.count("\n") == 1 and "error:" in err and "--help" in err, err
