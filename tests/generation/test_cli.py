"""`python -m generation`: one-line errors with exit code 2 for bad arguments, a PNG with
metadata for a good run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from generation.__main__ import main
from generation.png import read_png_metadata

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a fox"], "required: -o/--output"),
        (["a fox", "-o", "x.png", "--size", "big"], "size 'big' is not WxH"),
        (["a fox", "-o", "x.png", "--steps", "many"], "invalid int value"),
        (["", "-o", "x.png"], "prompt is empty"),
        (["a castle:heavy", "-o", "x.png"], "not a number"),
        (["a fox", "-o", "x.png", "--steps", "0"], "steps must be between"),
        (["a fox", "-o", "x.png", "--models", "/no/models.toml"], "models file"),
        (["a fox", "-o", "x.png", "--noise-prompt", "x:y"], "SEED:WEIGHT"),
        (["a fox", "-o", "x.png", "--optimizer", "lbfgs"], "invalid choice"),
        (["a fox", "-o", "x.png", "--device", "gpu0"], "unknown device"),
        (["a fox", "-o", "x.png", "--strength", "0.5"], "give one too"),
        (["a fox", "-o", "x.png", "--init-image", "i.png", "--strength", "2"], "at most 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, argv, message) -> None:
    argv = [str(tmp_path / a) if a == "x.png" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "x.png").exists()


def test_size_not_a_multiple_exits_2(capsys, tmp_path) -> None:
    code = main(["a fox", "-o", str(tmp_path / "x.png"), "--models", "tiny", "--size", "60", "-q"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: width 60 is not a multiple")


def test_missing_weights_exit_1(capsys, tmp_path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[[clip]]\nmodel = "imagine-tiny-clip"\n'
        f'config = "{Path(__file__).resolve().parents[2] / "generation/configs/imagine-tiny-clip.json"}"\n'
        f'[generators.vqgan.models.x]\nconfig = "{tmp_path / "none.yaml"}"\ncheckpoint = "random"\n'
    )
    assert main(["a fox", "-o", str(tmp_path / "x.png"), "--models", str(models), "-q"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: VQGAN x config not found") and "none.yaml" in last


def test_tiny_run_writes_a_png_with_metadata_and_frames(tmp_path) -> None:
    """The real command in a fresh process, as a newcomer types it (IMAGINE_MODELS=tiny)."""
    out = tmp_path / "out.png"
    env = {**os.environ, "IMAGINE_MODELS": "tiny"}
    done = subprocess.run(
        [sys.executable, "-m", "generation", "a lighthouse in a storm", "-o", str(out),
         "--steps", "4", "--size", "64x32", "--seed", "5", "--save-every", "2", "--cutn", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = read_png_metadata(out)
    assert (meta["prompt"], meta["seed"], meta["steps"], meta["size"]) == (
        "a lighthouse in a storm", "5", "4", "64x32",
    )  # fmt: skip
    assert meta["generator"] == "vqgan" and meta["models"].startswith("imagine-tiny-clip")
    assert read_png_metadata(tmp_path / "out-0002.png")["step"] == "2"
    assert (tmp_path / "out-0004.png").exists()
    assert "noise" in done.stderr  # the tiny preset says its pictures are noise
    assert done.stdout == ""  # stdout stays clean (taming's prints are swallowed)
