"""Shared pieces of the reference-equivalence tests (test_reference_*.py): each builds a small
model with its authors' own package, saves it in the format they published, loads it back
through a models TOML exactly as an operator would, and compares both models' outputs.

Not a conftest: the functions are imported explicitly, so each test file says what it uses.
"""

from __future__ import annotations

from pathlib import Path

import torch

from generation.__main__ import main
from generation.models import ModelsConfig, ModelStore
from generation.png import read_png_metadata

CONFIGS = Path(__file__).resolve().parents[2] / "generation" / "configs"
TINY_CLIP_JSON = CONFIGS / "imagine-tiny-clip.json"
# The perceptor of every reference TOML unless the test is about CLIP itself.
TINY_CLIP_TOML = f'[[clip]]\nmodel = "imagine-tiny-clip"\nconfig = "{TINY_CLIP_JSON}"\n'


def max_abs_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The largest absolute difference of two tensors of the same shape."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float((ours.detach().float() - theirs.detach().float()).abs().max())


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str, tolerance: float) -> float:
    """Fail unless the outputs agree within ``tolerance``; the message states the difference.
    Returns it (tests print it, pytest -s shows the figures)."""
    difference = max_abs_difference(ours, theirs)
    scale = float(theirs.detach().float().abs().max())
    assert difference <= tolerance, (
        f"{what}: max abs difference {difference:.3g} (outputs up to {scale:.3g}) exceeds "
        f"{tolerance:g}"
    )
    # Equal outputs of a model that outputs nothing prove nothing.
    assert scale > 0, f"{what}: the reference output is all zeros"
    print(f"{what}: max abs difference {difference:.3g} (outputs up to {scale:.3g})")
    return difference


def write_models_toml(folder: Path, body: str, clip: str = TINY_CLIP_TOML) -> Path:
    """A models TOML in ``folder`` (relative paths in it are relative to that folder)."""
    path = folder / "models.toml"
    path.write_text(f"download = false\n{clip}\n{body}", encoding="utf-8")
    return path


def load_store(models_toml: Path) -> ModelStore:
    """The store an operator gets from IMAGINE_MODELS=models_toml, on the CPU."""
    return ModelStore(ModelsConfig.load(str(models_toml)), device="cpu")


def paint_from_cli(models_toml: Path, generator: str, out: Path, **flags: str) -> dict[str, str]:
    """``python -m generation "a red fox" -o out --models models_toml --generator ...`` with a
    small, fast setting; returns the written PNG's metadata."""
    argv = ["a red fox in the snow", "-o", str(out), "--models", str(models_toml)]
    argv += ["--generator", generator, "--device", "cpu", "--seed", "3", "-q"]
    settings = {"steps": "2", "size": "32", "cutn": "2", **flags}
    for flag, value in settings.items():
        argv += [f"--{flag.replace('_', '-')}", value]
    assert main(argv) == 0
    return read_png_metadata(out)
