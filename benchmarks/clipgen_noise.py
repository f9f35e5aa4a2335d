"""CLIP-GEN's modality gap in the toy world, and a --noise sweep judged by the toy judge.

    python benchmarks/clipgen_noise.py --images toy-train --root noise-runs
    python benchmarks/clipgen_noise.py --images toy-train --root noise-runs \\
        --levels 0,0.25,0.5,0.75 --steps 600      # resumable: trained levels are reused

CLIP-GEN trains on image embeddings and is prompted with text embeddings; the two sit apart in
CLIP's space (the modality gap). LAFITE's noise (``--noise`` L: each training embedding becomes
normalise((1 - a) e + a u), a ~ U(0, L)) trains the model on a neighbourhood of each image
embedding wide enough, one hopes, to hold the text.

1. The gap, with the toy CLIP on ``--renders`` fresh renders (data seed 11): the mean cosine of
   an image's embedding to its own prompt's text embedding ('a red circle'), to other renders of
   the same class, to the other 39 prompts; the distance between the mean image and the mean
   text embedding; and the noise amount a whose noised embedding is, on average, as far from its
   clean one (cosine) as the text is from the image: training needs L >= that a to reach the
   text at all.
2. The sweep: one model per level (``python -m generation.train clipgen``'s own ``train``, the
   small preset, ``--steps`` steps; the first run's cache is hard-linked into the others, so the
   pictures are embedded once), each painted on benchmarks/quality.py's 8 prompts x 4 seeds
   through the engine and judged; a row per level: held-out loss, colour, shape, both right
   (standard errors), and both right at ``--guidance`` when it is not 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation import clipgen_model as cg  # noqa: E402
from generation.models import ModelsConfig, ModelStore  # noqa: E402
from generation.perceptor import resize  # noqa: E402
from generation.train import clipgen as training  # noqa: E402


def load_quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def modality_gap(toml: Path, renders: int, quality: ModuleType) -> dict[str, float]:
    """The toy CLIP's image/text figures of step 1 (module docstring)."""
    if toml.resolve().parent == quality.DEFAULT_TOML.parent:
        from toyworld import render as toy  # noqa: PLC0415 - the repo's toy world
    else:
        quality.load_judge(toml)  # puts that toy world's folder (data.py) on the path
        import data as toy  # noqa: PLC0415 - its data.py

    store = ModelStore(ModelsConfig.load(str(toml)), "cpu")
    perceptor = store.perceptor()
    clip = cg.conditioning_model(perceptor)
    prompts = [toy.prompt(c, s) for c in toy.COLOURS for s in toy.SHAPES]
    texts = perceptor.encode_text(prompts)[0]  # [40, E]
    pictures, classes = [], []
    for i in range(renders):
        image, attrs, caption = toy.render(11, i)
        pictures.append(torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255)
        classes.append(
            prompts.index(
                caption if hasattr(attrs, "colour") else toy.prompt(attrs["colour"], attrs["shape"])
            )
        )
    images = torch.stack(pictures)  # [N, 3, 32, 32]
    embeds = perceptor.embed(0, resize(images, clip.input_size))  # [N, E]
    own = torch.tensor(classes)  # [N]
    to_text = embeds @ texts.T  # [N, 40]
    same = own[:, None] == own[None]  # [N, N]
    same.fill_diagonal_(False)
    image_image = embeds @ embeds.T
    other = torch.ones_like(to_text, dtype=torch.bool)
    other[torch.arange(len(own)), own] = False
    text_cos = float(to_text[torch.arange(len(own)), own].mean())
    # The noise amount a with E cos(e, normalise((1 - a) e + a u)) = text_cos.
    draws = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(embeds.shape, generator=draws), dim=-1)
    amounts = torch.linspace(0, 1, 201)
    cosines = torch.stack(
        [(training.mix_noise(embeds, a, u) * embeds).sum(-1).mean() for a in amounts]
    )
    matching = float(amounts[(cosines - text_cos).abs().argmin()])
    return {
        "image_own_text": text_cos,
        "image_same_class_image": float(image_image[same].mean()),
        "image_other_text": float(to_text[other].mean()),
        "mean_image_to_mean_text": float((embeds.mean(0) - texts.mean(0)).norm()),
        "noise_matching_text": matching,
    }


def link_cache(first: Path, out: Path) -> None:
    """The first run's cache, hard-linked into ``out`` (no copy, nothing recomputed)."""
    if (first / "cache").is_dir() and not (out / "cache").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(first / "cache", out / "cache", copy_function=os.link)


def train_level(args: argparse.Namespace, level: float, first: Path | None) -> Path:
    out = args.root / f"noise-{level:g}"
    if (out / cg.CONFIG_FILE).is_file():
        print(f"noise {level:g}: model {out} already trained", flush=True)
        return out
    if first is not None:
        link_cache(first, out)
    settings = training.TrainSettings(
        models=str(args.models), images=args.images, out=out, preset=args.preset,
        steps=args.steps, noise=level, resume=(out / "checkpoints").is_dir(),
        workers=args.workers, log_every=max(1, args.steps // 4), eval_every=args.steps,
        sample_every=args.steps, checkpoint_every=max(1, args.steps // 2),
    )  # fmt: skip
    figures = training.train(settings, out=lambda line: None)
    print(
        f"noise {level:g}: trained {args.steps} steps, held-out loss {figures['val_loss']:.4f} "
        f"(EMA {figures['val_loss_ema']:.4f}), {figures['images_per_s']:.0f} images/s",
        flush=True,
    )
    return out


def judged(
    quality: ModuleType, args: argparse.Namespace, model: Path, label: str, **keys: Any
) -> list[dict[str, Any]]:
    config = ModelsConfig.load(str(args.models))
    section = {
        **config.generator_section("clipgen"),
        "model": str(model.resolve()),
        "candidates": args.candidates,
        "refine_steps": 0,
        **keys,
    }
    variant = quality.Variant(label, "clipgen", section)
    base = quality.base_request(argparse.Namespace(steps=None, cutn=None), config)
    options = argparse.Namespace(
        device="cpu", seeds="0,1,2,3", prompts=len(quality.PROMPTS),
        records=args.root / "records.jsonl", save_dir=None, verbose=False,
    )  # fmt: skip
    records = quality.read_records(options.records)
    judge = quality.load_judge(args.models)
    return quality.paint_and_judge(variant, config, base, options, judge, records)


def main(argv: list[str] | None = None) -> int:
    quality = load_quality()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=quality.DEFAULT_TOML, help="toy TOML")
    parser.add_argument(
        "--images", type=Path, help="text-free training pictures (python -m toyworld.data --dump)"
    )
    parser.add_argument("--root", type=Path, required=True, help="folder of the sweep's runs")
    parser.add_argument("--levels", default="0,0.25,0.5,0.75", help="--noise levels")
    parser.add_argument("--steps", type=int, default=600, help="training steps per level")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=1.0, help="also judge at this")
    parser.add_argument("--renders", type=int, default=400, help="renders for the gap")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gap-only", action="store_true", help="measure the gap, no sweep")
    parser.add_argument(
        "--cache-from", type=Path, help="a training run on the same --images: link its cache"
    )
    args = parser.parse_args(argv)

    gap = modality_gap(args.models, args.renders, quality)
    print(f"toy CLIP modality gap over {args.renders} renders:")
    print(f"  cos(image, its own prompt)         {gap['image_own_text']:.4f}")
    print(f"  cos(image, other prompts)          {gap['image_other_text']:.4f}")
    print(f"  cos(image, same-class image)       {gap['image_same_class_image']:.4f}")
    print(f"  |mean image - mean text|           {gap['mean_image_to_mean_text']:.4f}")
    print(
        f"  LAFITE noise a at which cos(e, noised e) = cos(image, own prompt): "
        f"{gap['noise_matching_text']:.3f}",
        flush=True,
    )
    if args.gap_only:
        return 0
    if args.images is None:
        raise SystemExit("--images is required for the sweep (or pass --gap-only)")
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    first = args.cache_from
    for level in (float(x) for x in args.levels.split(",")):
        model = train_level(args, level, first)
        first = first or model  # later levels link the first level's cache
        results = judged(quality, args, model, f"noise {level:g}")
        row = {"level": level, "rows": results}
        if args.guidance != 1.0:
            row["guided"] = judged(
                quality, args, model, f"noise {level:g} g{args.guidance:g}",
                guidance=args.guidance,
            )  # fmt: skip
        meta = json.loads((model / cg.CONFIG_FILE).read_text(encoding="utf-8"))["meta"]
        row["val_loss"] = meta["figures"].get("val_loss_ema") or meta["figures"]["val_loss"]
        rows.append(row)
        print(line(row, args), flush=True)
    print(f"\n{args.preset} preset, {args.steps} steps per level; 8 prompts x 4 seeds each")
    print(header(args))
    for row in rows:
        print(line(row, args))
    return 0


def header(args: argparse.Namespace) -> str:
    guided = f"  {'both g' + format(args.guidance, 'g'):>11}" if args.guidance != 1.0 else ""
    return f"{'noise':>6}  {'held-out':>8}  {'colour':>11}  {'shape':>11}  {'both':>11}" + guided


def line(row: dict[str, Any], args: argparse.Namespace) -> str:
    def rate(rows: list[dict[str, Any]], key: str) -> str:
        p = sum(r[key] for r in rows) / len(rows)
        return f"{p:.2f} ± {math.sqrt(p * (1 - p) / len(rows)):.2f}"

    text = (
        f"{row['level']:>6g}  {row['val_loss']:8.4f}  {rate(row['rows'], 'colour_correct'):>11}  "
        f"{rate(row['rows'], 'shape_correct'):>11}  {rate(row['rows'], 'correct'):>11}"
    )
    if "guided" in row:
        text += f"  {rate(row['guided'], 'correct'):>11}"
    return text


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
