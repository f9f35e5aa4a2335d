"""`python -m generation` refuses bad input itself, in one line and before any model loads:
a [defaults] value of the wrong type or an unknown top-level key in the models file (naming the
key and the file), an unknown generator, an output suffix it cannot write; `--help` lists the
generators; `-o x.jpg` writes a JPEG that keeps the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import generation.__main__ as cli
from generation.generators import generator_names
from generation.models_config import TINY_TOML


def models_file(tmp_path: Path, text: str) -> Path:
    """The tiny preset's TOML with ``text`` put in front (its paths made absolute)."""
    tiny = TINY_TOML.read_text(encoding="utf-8")
    for name in ("imagine-tiny-clip.json", "tiny-vqgan.yaml"):
        tiny = tiny.replace(f'"{name}"', f'"{TINY_TOML.parent / name}"')
    path = tmp_path / "my-models.toml"
    path.write_text(text + "\n" + tiny, encoding="utf-8")
    return path


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if the CLI gets as far as loading models."""
    monkeypatch.setattr(cli, "_run", lambda *a: pytest.fail("models were loaded"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_defaults_of_the_wrong_type_name_the_key_and_the_file(tmp_path, capsys, no_models):
    models = models_file(tmp_path, "")
    models.write_text(models.read_text().replace("steps = 50", 'steps = "many"'))
    assert cli.main(["a fox", "-o", str(tmp_path / "x.png"), "--models", str(models)]) == 2
    err = one_line_error(capsys)
    assert "[defaults] steps" in err and "'many'" in err and str(models) in err


@pytest.mark.parametrize(
    ("line", "words"),
    [('size = "big"', "[defaults] size"), ("cutn = 1.5", "[defaults] cutn"),
     ("generator = 3", "[defaults] generator")],
)  # fmt: skip
def test_other_defaults_of_the_wrong_type(tmp_path, capsys, no_models, line, words):
    models = models_file(tmp_path, "")
    key = line.split()[0]
    text = models.read_text()
    text = text.replace("[defaults]\n", f"[defaults]\n{line}\n")
    if key != "generator":
        text = "\n".join(x for x in text.splitlines() if not x.startswith(f"{key} = ") or x == line)
    models.write_text(text)
    assert cli.main(["a fox", "-o", str(tmp_path / "x.png"), "--models", str(models)]) == 2
    err = one_line_error(capsys)
    assert words in err and str(models) in err


def test_an_unknown_top_level_key_is_named_with_the_file(tmp_path, capsys, no_models):
    models = models_file(tmp_path, "dowload = false")  # a typo of download
    assert cli.main(["a fox", "-o", str(tmp_path / "x.png"), "--models", str(models)]) == 2
    err = one_line_error(capsys)
    assert "'dowload'" in err and str(models) in err


@pytest.mark.parametrize("where", ["option", "defaults"])
def test_an_unknown_generator_is_refused_before_models_load(tmp_path, capsys, no_models, where):
    argv = ["a fox", "-o", str(tmp_path / "x.png")]
    if where == "option":
        argv += ["--models", "tiny", "--generator", "vqgna"]
    else:
        models = models_file(tmp_path, "")
        models.write_text(
            models.read_text().replace("[defaults]\n", '[defaults]\ngenerator = "vqgna"\n')
        )
        argv += ["--models", str(models)]
    assert cli.main(argv) == 2
    err = one_line_error(capsys)
    assert "unknown generator 'vqgna'" in err and all(name in err for name in generator_names())


def test_help_lists_the_generators(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(name in text for name in generator_names())


@pytest.mark.parametrize("name", ["x.gif", "x.webp", "x"])
def test_an_output_format_it_cannot_write_is_refused(tmp_path, capsys, no_models, name):
    out = tmp_path / name
    assert cli.main(["a fox", "-o", str(out), "--models", "tiny"]) == 2
    err = one_line_error(capsys)
    assert repr(name) in err and ".jpg" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["x.jpg", "X.JPEG"])
def test_a_jpg_output_is_a_jpeg_with_the_settings(tmp_path, name):
    out = tmp_path / name
    argv = ["a fox", "-o", str(out), "--models", "tiny", "--steps", "2", "--size", "32",
            "--cutn", "2", "--seed", "3", "-q"]  # fmt: skip
    assert cli.main(argv) == 0
    with Image.open(out) as image:
        assert image.format == "JPEG" and image.size == (32, 32)
        settings = json.loads(image.info["comment"])
    assert (settings["prompt"], settings["seed"], settings["steps"]) == ("a fox", "3", "2")
