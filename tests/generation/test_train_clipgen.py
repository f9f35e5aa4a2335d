"""Training CLIP-GEN on the tiny preset: the loss falls, the condition steers, an interrupted
run resumes to the same model, and bad input is refused with nothing left behind."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from generation import clipgen_model as cg
from generation.errors import BadRequest
from generation.models import CONFIG_DIR
from generation.train import __main__ as train_cli
from generation.train.clipgen import TrainSettings, main, train
from tests.generation.generator_helpers import one_torch_thread  # noqa: F401


def write_images(folder: Path, n: int = 16, size: tuple[int, int] = (48, 40)) -> Path:
    """n pictures larger than 32 px (cropped and resized by training): each a colour of its own
    with a texture of its own, so that the tiny random CLIP and VQGAN tell them apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        texture = rng.random((size[1], size[0], 3)) - 0.5
        pixels = np.clip(rng.random(3)[None, None] + 0.5 * texture, 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def settings(images: Path, out: Path, **overrides: Any) -> TrainSettings:
    """What a user of the tiny preset would run, made short."""
    values: dict[str, Any] = {
        "models": "tiny",
        "images": images,
        "out": out,
        "preset": "tiny",
        "size": "32x32",
        "steps": 600,
        "batch_size": 16,
        "warmup": 10,
        "log_every": 50,
        "eval_every": 300,
        "sample_every": 600,
        "checkpoint_every": 300,
        "val_fraction": 0.2,
    }
    values.update(overrides)
    return TrainSettings(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    root = tmp_path_factory.mktemp("clipgen")
    images = write_images(root / "images")
    lines: list[str] = []
    figures = train(settings(images, root / "run", prompts=["a red circle"]), out=lines.append)
    yield figures, root / "run"


def test_training_loss_falls_well_below_the_uniform_entropy(trained: Any) -> None:
    figures, _ = trained
    uniform = math.log(1024)  # the tiny VQGAN's codes
    assert figures["uniform_loss"] == pytest.approx(uniform)
    assert figures["train_loss"] < uniform / 3, figures
    assert figures["val_loss"] < uniform / 3, figures


def test_samples_follow_the_embedding_they_are_given(trained: Any) -> None:
    """Sampled from image A's embedding, the tokens are closer to A's than to B's (counted
    where A's and B's tokens differ: the tiny random VQGAN gives most places the same code)."""
    _, out = trained
    model, meta = cg.load_model(out, "cpu")
    chunk = load_file(str(out / "cache" / "chunk-00000.safetensors"))
    embeds, tokens = chunk["embeds"], chunk["tokens"].long()  # [16, E], [16, T]
    wins = pairs = 0
    for a in range(len(tokens)):
        generator = torch.Generator().manual_seed(a)
        sampled = cg.sample_tokens(model, embeds[a].expand(8, -1), generator=generator)
        for b in range(len(tokens)):
            differ = tokens[a] != tokens[b]  # [T]
            if differ.sum() < 2:
                continue
            own = (sampled == tokens[a])[:, differ].float().mean()
            other = (sampled == tokens[b])[:, differ].float().mean()
            wins, pairs = wins + int(own > other), pairs + 1
    # A model that ignores its condition wins about half of the pairs (0.45 measured).
    assert pairs > 100 and wins > 0.6 * pairs, (wins, pairs)
    assert meta["image_size"] == [32, 32]


def test_the_run_leaves_a_loadable_model_a_sheet_and_checkpoints(trained: Any) -> None:
    _, out = trained
    assert (out / "samples" / "step-000600.png").is_file()
    with Image.open(out / "samples" / "step-000600.png") as sheet:
        assert sheet.width > 8 * 32  # 8 columns of 32 px pictures (and a text row)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000300",
        "step-000600",
    ]
    _, meta = cg.load_model(out, "cpu")
    assert meta["vqgan"]["n_embed"] == 1024 and meta["clip"]["model"] == "imagine-tiny-clip"
    assert not list(out.rglob("*.tmp"))


def test_resume_after_an_interruption_gives_the_same_model(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images")
    common = {"steps": 30, "checkpoint_every": 10, "eval_every": 10, "dropout": 0.1}
    train(settings(images, tmp_path / "whole", **common), out=lambda _: None)

    class Killed(Exception):
        pass

    def die_at_25(step: int) -> None:
        if step == 25:
            raise Killed

    with pytest.raises(Killed):
        train(settings(images, tmp_path / "parts", **common), on_step=die_at_25, out=print)
    assert not (tmp_path / "parts" / cg.WEIGHTS_FILE).exists()
    with pytest.raises(BadRequest, match="--resume"):
        train(settings(images, tmp_path / "parts", **common), out=print)
    lines: list[str] = []
    train(settings(images, tmp_path / "parts", resume=True, **common), out=lines.append)
    assert any("resumed" in line and "step 20" in line for line in lines), lines
    whole = load_file(str(tmp_path / "whole" / cg.WEIGHTS_FILE))
    parts = load_file(str(tmp_path / "parts" / cg.WEIGHTS_FILE))
    assert whole.keys() == parts.keys()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


def _toml_with_another_vqgan(path: Path) -> Path:
    path.write_text(
        f"""tiny = true
download = false
[defaults]
size = "32x32"
[[clip]]
model = "imagine-tiny-clip"
config = "{CONFIG_DIR / "imagine-tiny-clip.json"}"
seed = 0
[generators.vqgan]
default = "tiny"
[generators.vqgan.models.tiny]
config = "{CONFIG_DIR / "tiny-vqgan.yaml"}"
checkpoint = "random"
seed = 1
""",
        encoding="utf-8",
    )
    return path


def test_resuming_with_another_vqgan_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_images(tmp_path / "images")
    out = tmp_path / "run"
    train(settings(images, out, steps=10, checkpoint_every=5), out=lambda _: None)
    before = sorted(str(p) for p in out.rglob("*"))
    capsys.readouterr()
    other = _toml_with_another_vqgan(tmp_path / "other.toml")
    argv = ["--models", str(other), "--images", str(images), "--out", str(out), "--resume"]
    assert main([*argv, "--preset", "tiny", "--steps", "20"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "VQGAN" in error and "models TOML" in error, error
    assert sorted(str(p) for p in out.rglob("*")) == before


def _unreadable(folder: Path) -> None:
    write_images(folder, n=3)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")


def _too_small(folder: Path) -> None:
    write_images(folder, n=3)
    Image.new("RGB", (40, 16), (1, 2, 3)).save(folder / "tiny.png")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder.mkdir(), "no images in"),
        (lambda folder: (folder.mkdir(), (folder / "notes.txt").write_text("hi")), "no images in"),
        (lambda folder: None, "is not a folder"),
        (_unreadable, "cannot be read as images (e.g. broken.png)"),
        (_too_small, "smaller than 32x32 (e.g. tiny.png is 40x16)"),
    ],
    ids=["empty", "no-image-files", "missing", "unreadable", "too-small"],
)
def test_bad_image_folders_are_refused_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str
) -> None:
    folder = tmp_path / "images"
    make(folder)
    out = tmp_path / "out"
    argv = ["clipgen", "--models", "tiny", "--images", str(folder), "--out", str(out)]
    assert train_cli.main([*argv, "--size", "32x32"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and error.count("\n") == 0, error
    assert message in error, error
    assert not out.exists()


def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_images(tmp_path / "images", n=2)
    argv = ["--models", "tiny", "--images", str(images), "--out", str(tmp_path / "o")]
    assert main([*argv, "--preset", "huge"]) == 2
    assert main([*argv, "--size", "30x30"]) == 2  # not a multiple of the VQGAN's factor 8
    assert main([*argv, "--noise", "2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), errors
    assert "factor 8" in errors[1] and "--noise" in errors[2]
    assert not (tmp_path / "o").exists()


def test_the_embedding_reconstruction_loss_reaches_the_logits(tmp_path: Path) -> None:
    from generation.generators.vqgan import load_model as load_vqgan
    from generation.perceptor import resize
    from generation.train.clipgen import recon_loss
    from tests.generation.generator_helpers import tiny_store

    store = tiny_store()
    vqgan, perceptor = load_vqgan(store), store.perceptor()
    clip = cg.conditioning_model(perceptor)
    embeds = perceptor.embed(0, resize(torch.rand(2, 3, 32, 32), clip.input_size))  # [2, E]
    config = cg.ClipGenConfig(
        vocab_size=vqgan.codebook.shape[0], grid_h=4, grid_w=4, cond_dim=embeds.shape[1]
    )
    logits = torch.randn(2, 16, config.vocab_size, requires_grad=True)
    loss = recon_loss(logits, embeds, vqgan, perceptor, config)
    loss.backward()
    assert 0 <= loss.item() <= 2
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    images = write_images(tmp_path / "images", n=4)
    run = settings(images, tmp_path / "run", steps=6, recon_weight=0.2, checkpoint_every=6)
    figures = train(run, out=lambda _: None)
    assert math.isfinite(figures["train_loss"]) and (tmp_path / "run" / cg.WEIGHTS_FILE).is_file()
