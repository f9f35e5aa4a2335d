"""CLIP-GEN training throughput: images/s and tokens/s of `python -m generation.train clipgen`'s
step, for the toy world's shape and the real architectures' shapes.

    python benchmarks/clipgen_train.py                       # toy, base, medium; fp32
    python benchmarks/clipgen_train.py --shapes medium --batch 4 --precision bf16
    python benchmarks/clipgen_train.py --grad-checkpointing  # activations recomputed

A step is the training loop's own (``clipgen.accumulate_gradients``: LAFITE noise, condition
dropout, token cross-entropy, backward; then gradient clipping, AdamW with its parameter groups
and the EMA update), on random tokens and embeddings (speed does not depend on the data; the
cache is read by memory maps, not timed here). Shapes:

- toy: the small preset over the toy world's 8 x 8 tokens of 256 codes, 64-d CLIP embeddings
  (the model of benchmarks/quality.py), batch 64 as trained;
- base / medium: GPT-2 small's and GPT-2 medium's shapes (medium: CLIP-GEN's COCO model) over
  the 16 x 16 tokens of the f16 / 16384-code ImageNet VQGAN at 256 px, ViT-B-32's 512-d
  embeddings.

Each shape: ``--warmup`` uncounted steps, then ``--steps`` measured ones; the median and the
fastest step's images/s and tokens/s (tokens = images x grid tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation import clipgen_model as cg  # noqa: E402
from generation.train import clipgen as training  # noqa: E402

# shape name -> (preset, grid side, codes, CLIP embedding size, default batch)
SHAPES = {
    "toy": ("small", 8, 256, 64, 64),
    "base": ("base", 16, 16384, 512, 8),
    "medium": ("medium", 16, 16384, 512, 4),
}


def bench(name: str, args: argparse.Namespace) -> None:
    preset, grid, codes, dim, default_batch = SHAPES[name]
    batch = args.batch or default_batch
    device = torch.device(args.device)
    settings = training.TrainSettings(
        models="", images=Path(), out=Path(), preset=preset, batch_size=batch,
        precision=args.precision, grad_checkpointing=args.grad_checkpointing,
    )  # fmt: skip
    config = cg.ClipGenConfig(
        vocab_size=codes, grid_h=grid, grid_w=grid, cond_dim=dim, null_cond=True,
        **settings.model_shape(),
    )  # fmt: skip
    torch.manual_seed(0)
    model = cg.ClipGen(config).to(device).train()
    if args.grad_checkpointing:
        training.checkpoint_activations(model)
    ema = cg.ClipGen(config).to(device).requires_grad_(False)
    optimizer = training.make_optimizer(model, settings)
    autocast = training.autocast_for(settings, device)
    world = training.World()
    draws = torch.Generator().manual_seed(1)
    embeds = torch.nn.functional.normalize(torch.randn(batch, dim, generator=draws), dim=-1)
    tokens = torch.randint(codes, (batch, config.n_tokens), generator=draws)
    embeds, tokens = embeds.to(device), tokens.to(device)  # [B, E], [B, T]

    def step(index: int) -> None:
        a, u = training.noise_draws(batch, dim, settings.noise, draws)
        drop = (torch.rand(batch, generator=draws) < settings.cond_dropout).to(device)
        cond = training.mix_noise(embeds, a.to(device), u.to(device))
        training.accumulate_gradients(
            model, settings, world, cond, tokens, drop, embeds, autocast, None
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        training.update_ema(ema, model, settings.ema, index)

    seconds = []
    for index in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= args.warmup:
            seconds.append(time.perf_counter() - started)
    median, fastest = statistics.median(seconds), min(seconds)
    print(
        f"{name:<7} {preset:<7} {model.num_params() / 1e6:8.2f} M  {grid}x{grid} of {codes:>5}  "
        f"batch {batch:>3}  {batch / median:8.2f} images/s {batch * config.n_tokens / median:9.0f}"
        f" tokens/s (median {median:.3f} s/step)  fastest {batch / fastest:8.2f} images/s "
        f"{batch * config.n_tokens / fastest:9.0f} tokens/s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="toy,base,medium", help="comma-separated")
    parser.add_argument("--batch", type=int, help="images per step (default: by shape)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted steps (default 1)")
    parser.add_argument("--precision", default="fp32", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} "
        f"thread(s), precision {args.precision}, activation checkpointing "
        f"{'on' if args.grad_checkpointing else 'off'}; {args.steps} measured step(s) after "
        f"{args.warmup} warm-up"
    )
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
        bench(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
