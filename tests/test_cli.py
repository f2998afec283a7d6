"""The command line a user meets first: a typed config checked before anything runs, help for every
option, --version, clean one-line errors (issue 14)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from leader import __version__
from leader.cli import build_parser, main
from leader.config import PRESETS, ConfigError, config_keys, load_config


def _walk(parser: argparse.ArgumentParser, prefix: str = ""):
    yield prefix or "leader", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{prefix} {name}".strip())


def test_every_option_of_every_command_has_help_and_no_internal_name_leaks():
    missing, leaks = [], []
    for name, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                if action.metavar is None or "_cmd" in str(action.metavar):
                    leaks.append(f"{name}: {action.dest}")
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    assert not leaks, leaks


def test_a_missing_subcommand_names_the_user_word_not_an_internal_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "SUBCOMMAND" in err and "data_cmd" not in err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"leader {__version__}"


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_validate(preset):
    cfg = load_config(preset)
    assert cfg.teachers["disease"].kind == "disease" and cfg.teachers["anatomy"].kind == "anatomy"
    assert cfg.teachers["disease"].stages == [1, 2] and cfg.teachers["anatomy"].stages == [2]


@pytest.mark.parametrize("override, expected", [
    ("stage1.epochz=3", "unknown config key 'stage1.epochz' in --set stage1.epochz=3 (did you mean 'stage1.epochs'?)"),
    ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
    ("stage1.epochs=abc", "config key 'stage1.epochs': Input should be a valid integer"),
    ("optim.lr=-1", "config key 'optim.lr': Input should be greater than 0 (got -1, from --set optim.lr=-1)"),
    ("loss=msee", "config key 'loss': Input should be 'mse', 'cosine', 'smooth_l1' or 'soft_ce'"),
    ("teachers.rad.kindd=other", "(did you mean 'teachers.rad.kind'?)"),
    ("teachers.anatomy.stages=[3]", "stages must be a non-empty list"),
])
def test_bad_set_is_one_line_exit_2_before_any_path_is_touched(tmp_path, capsys, override, expected):
    """Misspelled key, wrong type, value out of range: exit 2 with the key named; the manifest
    path does not exist and the output folder is never created: the config is checked first."""
    out = tmp_path / "run"
    rc = main(["train", "--manifest", str(tmp_path / "nope.parquet"), "--teacher", "disease=/nowhere",
               "--out", str(out), "--set", override])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err
    assert err.startswith("leader: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_bad_yaml_file_is_named(tmp_path, capsys):
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump({"stage2": {"batch_sise": 8}}))
    assert main(["config", "show", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"unknown config key 'stage2.batch_sise' in config file {f} (did you mean 'stage2.batch_size'?)" in err
    with pytest.raises(ConfigError, match="top level of a config must be a mapping"):
        f.write_text("- a\n- b\n")
        load_config(f)


def test_config_show_and_keys(capsys):
    assert main(["config", "show", "--config", "demo-quick", "--set", "stage1.epochs=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["stage1"]["epochs"] == 3 and shown["student"]["img_size"] == 224
    assert shown["teachers"]["disease"]["stages"] == [1, 2]
    assert main(["config", "keys", "--grep", "stage1.epochs"]) == 0
    out = capsys.readouterr().out
    assert "stage1.epochs" in out and "epochs of this stage" in out
    keys = {k for k, *_ in config_keys()}
    assert {"optim.lr", "teachers.<name>.kind", "teachers.<name>.target_norm", "fit.anatomy.zones"} <= keys
    assert all(h for *_, h in config_keys())  # every key has one line of help


def test_index_of_a_file_is_a_clear_error(tmp_path, capsys):
    f = tmp_path / "a.png"
    f.write_bytes(b"x")
    assert main(["data", "index", "--root", str(f), "--out", str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"--root {f} is a file, not a folder" in err and "Errno" not in err


def test_index_skip_prints_the_summary_once_without_python_warning_noise(tmp_path, capsys):
    """A reader warning shows as one 'leader: warning:' line (no source path or code line), and the
    summary appears once."""
    root = tmp_path / "f"
    root.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("L", (32, 32), 40 + i).save(root / f"ok{i}.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    proc = subprocess.run([sys.executable, "-m", "leader.cli", "data", "index", "--root", str(root), "--dataset",
                           "folder", "--on-error", "skip", "--out", str(tmp_path / "m.parquet")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert both.count("indexed 2 images, skipped 1") == 1
    assert "warnings.warn" not in proc.stderr and ".py:" not in proc.stderr
    assert "leader: warning:" in proc.stderr


def test_train_says_what_runs_with_only_a_disease_teacher(tmp_path, capsys):
    """Issue 14 item 5: with only a disease teacher, the plan says stage 2 distils the disease
    teacher alone and that the anatomy teacher is configured without a source."""
    import torch

    from leader.phantoms import make_phantom_pack
    from leader.teachers.base import InputSpec
    from leader.teachers.module import save_teacher

    make_phantom_pack(tmp_path / "p", n_images=4, size=64, seed=0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, 4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    import timm

    net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_teacher(net, "test_resnet", {}, InputSpec(size=32, channels=3), "disease", tmp_path / "d")
    rc = main(["train", "--manifest", str(tmp_path / "p" / "manifest.parquet"), "--teacher", f"disease={tmp_path / 'd'}",
               "--out", str(tmp_path / "run"), "--config", "demo-quick", "--set", "student.backbone=test_vit",
               "--set", "student.img_size=32", "--set", "student.backbone_kwargs={}", "--set", "stage1.epochs=1",
               "--set", "stage2.epochs=1", "--set", "stage1.batch_size=4", "--set", "stage2.batch_size=4",
               "--set", "device=cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "stage 1 (whole images): 4 samples x 1 epochs, distilling disease" in err
    assert "teacher 'anatomy' (anatomy) is configured but has no source: not used, no head" in err


def test_progress_prints_lines_when_not_a_terminal(capsys, monkeypatch):
    from leader.progress import Progress

    monkeypatch.setenv("LEADER_PROGRESS_EVERY", "0")
    p = Progress(10, "stage 1", "step")
    assert not p.tty  # pytest captures stderr: not a terminal
    for _ in range(3):
        p.update(1, epoch="1/2", loss=0.5)
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("stage 1: 1/10 steps (10%)") and "epoch 1/2" in err[0] and "loss 0.5" in err[0]
    assert "ETA" in err[0] and err[-1].endswith(tuple("0123456789s")) and "done in" in err[-1]
