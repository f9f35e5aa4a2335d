"""The toy world's figures, with every model loaded the way the project loads it.

    python -m toyworld.evaluate       # after python -m toyworld.build (which runs this last)

Loads ``toyworld/toyworld.toml`` through ``generation.models`` (the toy CLIP through the
perceptor, the toy VQGAN through the vqgan generator's loader) and prints, on held-out renders:
the toy CLIP's zero-shot colour / shape accuracy over the 40 prompts, the VQGAN's PSNR, and the
judge's rates on clean renders, on renders passed through the VQGAN (a ceiling for anything it
decodes) and on uniform noise. Writes them to ``toyworld/artifacts/figures.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from generation.generators import vqgan
from generation.models import ModelsConfig, ModelStore
from toyworld import ARTIFACTS, TOML
from toyworld.judge import judge, summarise
from toyworld.render import SHAPES, all_prompts, render_many

EVAL_SEED = 5  # seen by no training script


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float [N, 3, 32, 32] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [0, 1] -> uint8 [N, H, W, 3]."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def figures(n: int) -> dict[str, object]:
    store = ModelStore(ModelsConfig.load(str(TOML)), "cpu")
    perceptor = store.perceptor()
    model = vqgan.load_model(store)
    images, classes = render_many(EVAL_SEED, 0, n)
    prompts = all_prompts()
    captions = [prompts[c] for c in classes]
    pictures = to_tensor(images)  # [N, 3, 32, 32]

    texts = perceptor.encode_text(prompts)[0]  # [40, 64]
    guess = (perceptor.encode_image(pictures)[0] @ texts.T).argmax(-1).numpy()  # [N]
    k = len(SHAPES)
    clip = {
        "colour": float(np.mean(guess // k == classes // k)),
        "shape": float(np.mean(guess % k == classes % k)),
        "both": float(np.mean(guess == classes)),
    }
    decoded = ((model.decode(model.encode(pictures)) + 1) / 2).clamp(0, 1)  # [N, 3, 32, 32]
    mse = (decoded - pictures).pow(2).flatten(1).mean(-1).clamp_min(1e-10)
    psnr = float((-10 * torch.log10(mse)).mean())
    noise = np.random.default_rng(0).integers(0, 256, size=images.shape, dtype=np.uint8)
    return {
        "eval_seed": EVAL_SEED,
        "n": n,
        "toy_clip_zero_shot": clip,
        "vqgan_psnr_db": psnr,
        "judge_clean": summarise(judge(list(images), captions)),
        "judge_vqgan": summarise(judge(list(to_uint8(decoded)), captions)),
        "judge_noise": summarise(judge(list(noise), captions)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="held-out renders (1000)")
    args = parser.parse_args(argv)
    found = figures(args.n)
    (ARTIFACTS / "figures.json").write_text(json.dumps(found, indent=1) + "\n")
    clip = found["toy_clip_zero_shot"]
    print(f"toy world figures on {args.n} renders of data seed {EVAL_SEED}, models loaded "
          f"from {TOML.name} by generation.models:")  # fmt: skip
    print(f"  toy CLIP zero-shot over 40 prompts: colour {clip['colour']:.4f}, shape "
          f"{clip['shape']:.4f}, both {clip['both']:.4f}")  # fmt: skip
    print(f"  toy VQGAN encode->decode PSNR: {found['vqgan_psnr_db']:.2f} dB")
    for key, label in (("judge_clean", "clean renders"), ("judge_vqgan", "through the VQGAN"),
                       ("judge_noise", "uniform noise")):  # fmt: skip
        rates = found[key]
        print(f"  judge on {label}: colour {rates['colour_correct']:.4f}, shape "
              f"{rates['shape_correct']:.4f}, both {rates['correct']:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
