"""Continuous batching: pictures per minute at batch 1, 2, 4 and 8 for vqgan and clipgen, with
the architectures of the real models (random weights: speed does not depend on them), as ratios
against batch 1 measured in the same run.

    python benchmarks/batching.py             # 256 px, cutn 32, clipgen with 16 candidates
    python benchmarks/batching.py --quick     # fewer measured steps, clipgen with 1 candidate
    python benchmarks/batching.py --generators vqgan --batches 1 4

Models: open_clip ViT-B-32 as the CLIP, the f16 / 16384-code ImageNet VQGAN, and CLIP-GEN at
GPT-2 medium's shape (24 x 1024) over the 16 x 16 token grid of that VQGAN at 256 px, as
benchmarks/real_models.py builds them for every speed benchmark.

- vqgan: B jobs (other prompts and seeds each) stepped together through generation.steps, the
  worker's batched step; seconds per step are the median of ``--steps`` measured steps after
  ``--warmup``; a picture is ``--picture-steps`` (the default 250) such steps, so pictures per
  minute = 60 * B / (seconds per step * 250), an estimate from the measured steps.
- clipgen: B jobs painted to the end together (their candidates in one KV cache, decoded and
  ranked together): pictures per minute = 60 * B / seconds, measured whole.
- On CUDA: the peak GPU memory of each batch size, and the GPU utilisation when pynvml is there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real_models import clipgen_section, real_store  # noqa: E402
from generation import engine  # noqa: E402
from generation.generators import get_generator  # noqa: E402
from generation.models import ModelStore  # noqa: E402
from generation.request import GenerationRequest, RunControl  # noqa: E402
from generation.steps import StepBatch  # noqa: E402

PROMPTS = (
    "a lighthouse in a storm, oil painting",
    "a red fox in the snow",
    "a castle on a hill at night | fog:-0.5",
    "green fields under a summer sky",
    "a portrait of an old sailor, charcoal",
    "a city of glass, concept art",
    "a bowl of fruit, still life:2 | blurry:-1",
    "the surface of the moon",
)
DEFAULT_STEPS = GenerationRequest.__dataclass_fields__["steps"].default  # 250


def make_store(args: argparse.Namespace) -> ModelStore:
    section = clipgen_section(
        "medium", args.size, candidates=args.candidates, batch_size=args.candidates
    )
    return real_store(args.device, clipgen=section)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def requests(generator: str, batch: int, steps: int, args: argparse.Namespace) -> list[Any]:
    return [
        GenerationRequest(
            PROMPTS[i % len(PROMPTS)],
            seed=i,
            steps=steps,
            width=args.size,
            height=args.size,
            generator=generator,
            cutn=args.cutn,
        )
        for i in range(batch)
    ]


def started_batch(store: ModelStore, jobs: list[GenerationRequest]) -> StepBatch:
    module = get_generator(jobs[0].generator)
    batch = StepBatch(module, store, module.batch_key(jobs[0], store))
    for request in jobs:
        batch.add(engine.start_job(request, store, RunControl()))
    return batch


def bench_vqgan(store: ModelStore, batch: int, args: argparse.Namespace) -> tuple[float, str]:
    jobs = requests("vqgan", batch, args.warmup + args.steps, args)
    stepper = started_batch(store, jobs)
    for _ in range(args.warmup):
        stepper.step()
    seconds = []
    for _ in range(args.steps):
        sync(store.device)
        start = time.perf_counter()
        assert stepper.step() == [], "a job failed"
        sync(store.device)
        seconds.append(time.perf_counter() - start)
    per_step = statistics.median(seconds)
    per_minute = 60 * batch / (per_step * args.picture_steps)
    return per_minute, f"{per_step:.3f} s per batched step"


def bench_clipgen(store: ModelStore, batch: int, args: argparse.Namespace) -> tuple[float, str]:
    jobs = requests("clipgen", batch, 1, args)
    sync(store.device)
    start = time.perf_counter()
    stepper = started_batch(store, jobs)
    while stepper.members:
        assert stepper.step() == [], "a job failed"
        for state in stepper.finished():
            engine.finish_job(state, store)
            stepper.remove(state)
    sync(store.device)
    seconds = time.perf_counter() - start
    return 60 * batch / seconds, f"{seconds:.2f} s for the {batch} pictures"


BENCHES = {"vqgan": bench_vqgan, "clipgen": bench_clipgen}


def gpu_facts(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    facts = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    try:
        facts += f", GPU utilisation {torch.cuda.utilization(device)} % at the end"
    except Exception:  # noqa: BLE001 - pynvml missing: memory only
        pass
    return facts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 measured steps, 1 candidate")
    parser.add_argument("--generators", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--steps", type=int, help="measured vqgan steps (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--picture-steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--candidates", type=int, help="clipgen candidates (16, quick 1)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 5)
    args.candidates = args.candidates or (1 if args.quick else 16)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(
        f"device {args.device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads; {args.size} px, cutn {args.cutn}; vqgan: "
        f"{args.steps} measured steps after {args.warmup}, a picture = {args.picture_steps} "
        f"steps; clipgen: GPT-2 medium shape, {args.candidates} candidate(s) per picture",
        flush=True,
    )
    store = make_store(args)
    for generator in args.generators:
        bench = BENCHES[generator]
        bench(store, 1, args)  # loads the models and warms the kernels; not counted
        rates: dict[int, float] = {}
        for batch in args.batches:
            if args.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(args.device)
            rates[batch], detail = bench(store, batch, args)
            ratio = rates[batch] / rates[args.batches[0]]
            print(
                f"{generator} batch {batch}: {rates[batch]:.3f} pictures/min, "
                f"{ratio:.2f}x batch {args.batches[0]} ({detail}{gpu_facts(args.device)})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
