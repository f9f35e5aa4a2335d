"""CLIP-GEN's speed with the real architectures: training throughput, sampling seconds, and the
ratio to one VQGAN+CLIP picture of the same size.

    python benchmarks/clipgen.py                  # all three parts
    python benchmarks/clipgen.py --quick          # fewer steps and a small training batch (CPU)
    python benchmarks/clipgen.py --parts sample   # one part: train, sample or vqgan

The models are random (speed does not depend on the weights): CLIP-GEN at ``--preset``
(default medium: GPT-2 medium's shape, 24 x 1024, the paper's COCO size) over the 16 x 16 token
grid of the f16 / 16384-code ImageNet VQGAN at 256 px, with open_clip ViT-B-32 as the CLIP.

- train: the once-per-image preprocessing (VQGAN encoder + CLIP image tower, what
  ``python -m generation.train clipgen`` caches) and the training step of that command (LAFITE
  noise on the embeddings, token cross-entropy, backward, gradient clipping, AdamW with its
  parameter groups), both in images per second.
- sample: the ``clipgen`` generator through the engine (conditioning, sampling with the KV
  cache, decoding every candidate, CLIP re-ranking) for 1 and for 16 candidates (one batch),
  seconds per picture; and the token sampling alone.
- vqgan: seconds per step of the ``vqgan`` generator through the engine at the same size and
  cutn; a picture is that times the default step count (250), an estimate from a few measured
  steps, said so in the output. The ratios compare it with the sampling seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real_models import clipgen_section, real_store  # noqa: E402
from generation import clipgen_model as cg  # noqa: E402
from generation.engine import generate  # noqa: E402
from generation.generators import clipgen, vqgan  # noqa: E402
from generation.models import ModelStore  # noqa: E402
from generation.perceptor import resize  # noqa: E402
from generation.request import GenerationRequest, RunControl  # noqa: E402
from generation.train import clipgen as training  # noqa: E402

PROMPT = "a lighthouse in a storm, oil painting"
DEFAULT_STEPS = GenerationRequest.__dataclass_fields__["steps"].default  # 250
PARTS = ("train", "sample", "vqgan")


def make_store(args: argparse.Namespace, **clipgen_keys: Any) -> ModelStore:
    """ViT-B-32 + the f16 16384 VQGAN (random weights) + a random CLIP-GEN of the preset."""
    section = clipgen_section(args.preset, args.size, top_k=500, top_p=0.95, **clipgen_keys)
    return real_store(args.device, clipgen=section)


def timed(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each call after ``warmup`` uncounted ones."""
    seconds = []
    for index in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def describe(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds):.2f} s, fastest {min(seconds):.2f} s"


# --------------------------------------------------------------------------- parts


def bench_train(args: argparse.Namespace, store: ModelStore) -> None:
    device = store.device
    tokenizer = vqgan.load_model(store)
    perceptor = store.perceptor()
    model = clipgen.random_model(store, tokenizer, args.preset, args.size // 16).train()
    print(
        f"train: clipgen {args.preset} ({model.num_params() / 1e6:.0f} M parameters), "
        f"{args.size} px = {model.config.grid_h}x{model.config.grid_w} tokens of "
        f"{model.config.vocab_size} codes, batch {args.batch}",
        flush=True,
    )
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)  # [B, 3, H, W]

    def preprocess() -> None:
        with torch.no_grad(), store.autocast():
            tokenizer.encode(images)  # [B, D, h, w]: the nearest codes
            perceptor.embed(0, resize(images, perceptor.models[0].input_size))  # [B, E]

    seconds = timed(preprocess, args.train_steps, 1, device)
    print(
        f"  preprocessing (VQGAN encode + CLIP embed, once per image): "
        f"{args.batch / statistics.median(seconds):.2f} images/s ({describe(seconds)} per batch)",
        flush=True,
    )

    settings = training.TrainSettings(
        models="benchmark", images=Path("."), out=Path("."), preset=args.preset
    )
    optimizer = training.make_optimizer(model, settings)
    noise = torch.Generator().manual_seed(0)
    embeds = F.normalize(torch.randn(args.batch, model.config.cond_dim, device=device), dim=-1)
    tokens = torch.randint(model.config.vocab_size, (args.batch, model.config.n_tokens))
    tokens = tokens.to(device)  # [B, T]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def train_step() -> None:
        # What one step of `python -m generation.train clipgen` does (its step 5b-5c).
        cond = training.add_noise(embeds, settings.noise, noise)  # [B, E]
        with autocast:
            logits = model(cond, tokens)  # [B, T, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()

    seconds = timed(train_step, args.train_steps, 1, device)
    print(
        f"  training step (forward, backward, AdamW): "
        f"{args.batch / statistics.median(seconds):.2f} images/s ({describe(seconds)} per step "
        f"of {args.batch})",
        flush=True,
    )


def bench_sample(args: argparse.Namespace) -> dict[int, float]:
    return {candidates: bench_candidates(args, candidates) for candidates in (1, 16)}


def bench_candidates(args: argparse.Namespace, candidates: int) -> float:
    """Seconds per picture of the clipgen generator with ``candidates`` in one batch."""
    store = make_store(args, candidates=candidates, batch_size=candidates)
    request = GenerationRequest(
        prompt=PROMPT,
        generator="clipgen",
        width=args.size,
        height=args.size,
        progress_every=10**6,
    )
    model, _ = clipgen.load_model(store)  # load before the clock starts
    seconds = timed(
        lambda: generate(request, store, RunControl()), args.sample_repeats, 0, store.device
    )
    cond = F.normalize(torch.randn(candidates, model.config.cond_dim), dim=-1).to(store.device)
    generator = torch.Generator(store.device).manual_seed(0)
    tokens_only = timed(
        lambda: cg.sample_tokens(
            model, cond, temperature=1.0, top_k=500, top_p=0.95, generator=generator
        ),
        args.sample_repeats,
        0,
        store.device,
    )
    median = statistics.median(seconds)
    print(
        f"sample: {candidates:>2} candidate(s), {args.size} px, clipgen {args.preset}: "
        f"{median:.2f} s per picture through the engine ({describe(seconds)}); "
        f"token sampling alone {statistics.median(tokens_only):.2f} s",
        flush=True,
    )
    return median


def bench_vqgan(args: argparse.Namespace) -> float:
    store = make_store(args)
    request = GenerationRequest(
        prompt=PROMPT,
        width=args.size,
        height=args.size,
        cutn=args.cutn,
        steps=args.vqgan_steps + 2,
        progress_every=10**6,
    )
    vqgan.check(request, store)
    store.perceptor()
    starts: list[float] = []

    def between_steps() -> None:
        if store.device.type == "cuda":
            torch.cuda.synchronize(store.device)
        starts.append(time.perf_counter())

    generate(request, store, RunControl(between_steps=between_steps))
    steps = [b - a for a, b in zip(starts, starts[1:], strict=False)][1:]  # drop the warm-up
    per_step = statistics.median(steps)
    picture = per_step * DEFAULT_STEPS
    print(
        f"vqgan: {per_step:.2f} s per step at {args.size} px, cutn {args.cutn} (median of "
        f"{len(steps)} measured steps); one picture of {DEFAULT_STEPS} steps = "
        f"{picture:.0f} s (estimated: {len(steps)} steps measured, scaled to {DEFAULT_STEPS})",
        flush=True,
    )
    return picture


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="train,sample,vqgan (default)")
    parser.add_argument("--preset", default="medium", choices=tuple(cg.PRESETS))
    parser.add_argument("--size", type=int, default=256, help="picture side (default 256)")
    parser.add_argument("--batch", type=int, default=16, help="training batch (default 16)")
    parser.add_argument("--train-steps", type=int, default=5, help="measured training steps")
    parser.add_argument("--sample-repeats", type=int, default=3, help="pictures per setting")
    parser.add_argument("--vqgan-steps", type=int, default=5, help="measured VQGAN steps")
    parser.add_argument("--cutn", type=int, default=32, help="VQGAN+CLIP cutouts (default 32)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 steps, 1 repeat")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--vqgan-seconds",
        type=float,
        help="seconds of one VQGAN+CLIP picture from an earlier run (skips measuring it)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.train_steps = min(args.batch, 2), min(args.train_steps, 2)
        args.sample_repeats, args.vqgan_steps = 1, min(args.vqgan_steps, 2)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {PARTS}")
    if args.size % 16:
        parser.error("--size must be a multiple of 16 (the VQGAN's factor)")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = args.parts.split(",")
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(
        f"device {args.device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{', quick' if args.quick else ''}",
        flush=True,
    )
    if "train" in parts:
        bench_train(args, make_store(args))
    sampled = bench_sample(args) if "sample" in parts else {}
    picture = args.vqgan_seconds
    if "vqgan" in parts:
        picture = bench_vqgan(args)
    if sampled and picture:
        for candidates, seconds in sampled.items():
            print(
                f"ratio: one VQGAN+CLIP picture ({DEFAULT_STEPS} steps, estimated) takes "
                f"{picture / seconds:.1f}x the time of clipgen with {candidates} candidate(s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
