"""Train the toy CLIP: an open_clip model (ModifiedResNet image tower, 64-d, 32 px) on our renders.

    python -m toyworld.train_clip            # writes toyworld/artifacts/toy_clip/

Contrastive (CLIP's symmetric cross-entropy) on captions 'a red circle': each batch holds every
one of the 40 classes ``PER_CLASS`` times, so no two captions of a batch disagree about a
picture; a caption's positives are all the pictures of its class. Pictures are normalised with
OpenAI CLIP's mean/std (open_clip's default for a config without its own), and half of them are
random crops of 60-100 % of the side resized back, as the generators' cutouts are. Training
renders are data seed 0; the zero-shot figures are on seed 1. The model has BatchNorm: the
project loads it in eval() mode, and so does the evaluation here.

The weights are stored in float16 (safetensors): the text tower's token embedding (open_clip's
49408-word vocabulary) is most of the file, and open_clip casts them back to float32 on loading.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from toyworld import ARTIFACTS
from toyworld.render import SHAPES, all_prompts, render_many

OUT = ARTIFACTS / "toy_clip"
MODEL_NAME = "toyworld-clip-rn"
TRAIN_SEED, EVAL_SEED = 0, 1
PER_CLASS = 2
# Our own small architecture: 1 block per ResNet stage (32 px -> 1x1 before the attention pool).
ARCHITECTURE = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float [N, 3, 32, 32] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def random_crops(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the pictures [B, 3, 32, 32] replaced by a crop of 60-100 % of the side, resized."""
    out = images.clone()
    size = images.shape[-1]
    for i in torch.nonzero(torch.rand(len(images), generator=generator) < 0.5).flatten():
        side = int(torch.randint(int(0.6 * size), size + 1, (), generator=generator))
        y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
        crop = images[i : i + 1, :, y : y + side, x : x + side]
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
    return out


def create_model() -> torch.nn.Module:
    OUT.mkdir(parents=True, exist_ok=True)
    config = OUT / f"{MODEL_NAME}.json"
    config.write_text(json.dumps(ARCHITECTURE, indent=1) + "\n")
    open_clip.add_model_config(config)
    return open_clip.create_model(MODEL_NAME, pretrained=None)


@torch.no_grad()
def zero_shot(model: torch.nn.Module, n: int) -> dict[str, float]:
    """Colour, shape and both-right accuracy over the 40 prompts on n renders of EVAL_SEED."""
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    texts = F.normalize(model.encode_text(tokenizer(all_prompts())), dim=-1)  # [40, 64]
    images, classes = render_many(EVAL_SEED, 0, n)
    predicted = []
    for start in range(0, n, 250):
        batch = (to_tensor(images[start : start + 250]) - MEAN) / STD
        embeds = F.normalize(model.encode_image(batch), dim=-1)  # [b, 64]
        predicted.append((embeds @ texts.T).argmax(-1))
    guess = torch.cat(predicted).numpy()
    shapes = len(SHAPES)
    return {
        "n": n,
        "colour": float(np.mean(guess // shapes == classes // shapes)),
        "shape": float(np.mean(guess % shapes == classes % shapes)),
        "both": float(np.mean(guess == classes)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    draws = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    images, classes = render_many(TRAIN_SEED, 0, args.n_train)
    pictures = to_tensor(images)  # [N, 3, 32, 32]
    by_class = [torch.from_numpy(np.nonzero(classes == c)[0]) for c in range(40)]
    model = create_model()
    tokens = open_clip.get_tokenizer(MODEL_NAME)(all_prompts())  # [40, 77]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.steps, pct_start=0.1
    )
    owner = torch.arange(40).repeat_interleave(PER_CLASS)  # [40 * PER_CLASS]: class of a row
    positives = (owner[None] == torch.arange(40)[:, None]).float() / PER_CLASS  # [40, B]
    for step in range(1, args.steps + 1):
        model.train()
        picks = torch.cat([
            members[torch.randint(len(members), (PER_CLASS,), generator=draws)]
            for members in by_class
        ])  # fmt: skip
        batch = random_crops(pictures[picks], draws)  # [B, 3, 32, 32]
        image_embeds = F.normalize(model.encode_image((batch - MEAN) / STD), dim=-1)  # [B, 64]
        text_embeds = F.normalize(model.encode_text(tokens), dim=-1)  # [40, 64]
        logits = model.logit_scale.exp() * image_embeds @ text_embeds.T  # [B, 40]
        loss = (F.cross_entropy(logits, owner) + F.cross_entropy(logits.T, positives)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)  # fmt: skip

    figures = zero_shot(model, args.n_eval)
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "open_clip_model.safetensors"))
    metrics = {
        "train_seed": TRAIN_SEED, "eval_seed": EVAL_SEED, "steps": args.steps,
        "zero_shot": figures, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"toy CLIP zero-shot over the 40 prompts on {args.n_eval} held-out renders (seed "
        f"{EVAL_SEED}): colour {figures['colour']:.4f}, shape {figures['shape']:.4f}, both "
        f"{figures['both']:.4f}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
