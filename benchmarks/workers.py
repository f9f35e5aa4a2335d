"""Several workers: `python benchmarks/workers.py` (a few minutes on a 2-core CPU; needs the
ray extra: pip install -e '.[ray]').

With the tiny models on the CPU, a Ray painter (IMAGINE_RAY_GPUS=0) stands in for a GPU; each
painter's torch uses one thread, so on a machine with N cores up to N painters do not compete.
Measured, all in one run:

- pictures per minute with the local worker (today's GPU thread in the bot's process), and with
  a Ray pool of 1 and of 2 painters, each over the same batch of jobs submitted at once;
- the ratio 2 painters / 1 painter (the scaling);
- dispatch overhead per job: the same batch of one-step jobs on the local worker and on one
  Ray painter; the difference of the wall times per job is what going through Ray costs
  (the actor call, the streamed frames and the PNG coming back).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from generation.request import GenerationRequest  # noqa: E402
from generation.worker import GpuWorker  # noqa: E402


def requests(count: int, steps: int, size: int, generator: str) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            f"a lighthouse in a storm, picture {i}",
            seed=i,
            steps=steps,
            width=size,
            height=size,
            cutn=8,
            generator=generator,
            progress_every=10,
        )
        for i in range(count)
    ]


async def run_batch(workers: Any, batch: list[GenerationRequest]) -> float:
    """Submit every job at once (the pool keeps ``capacity`` busy); seconds until all are done.
    Like the bot's scheduler, no more than ``capacity`` jobs are handed over at a time."""
    started = time.perf_counter()
    room = asyncio.Semaphore(workers.capacity)

    async def one(request: GenerationRequest) -> None:
        async with room:
            await workers.submit(request, lambda _frame: None).wait()

    await asyncio.gather(*(one(request) for request in batch))
    return time.perf_counter() - started


async def measure(workers: Any, args: argparse.Namespace) -> dict[str, float]:
    await workers.start()
    try:
        # Warm-up: one job per worker (first allocations, lazy imports).
        warm = requests(workers.capacity, 2, args.size, args.generator)
        await run_batch(workers, warm)
        seconds = await run_batch(
            workers, requests(args.jobs, args.steps, args.size, args.generator)
        )
        tiny_jobs = requests(args.overhead_jobs, 1, 32, args.generator)
        overhead = await run_batch(workers, tiny_jobs) if workers.capacity == 1 else float("nan")
    finally:
        await workers.close()
    return {
        "per_minute": args.jobs / seconds * 60,
        "seconds": seconds,
        "one_step_job": overhead / args.overhead_jobs,
    }


async def main_async(args: argparse.Namespace) -> None:
    import ray

    from generation.ray_pool import RayPool

    print(
        f"{args.jobs} jobs of {args.steps} steps at {args.size}x{args.size} px, generator "
        f"{args.generator}, tiny models on the CPU"
    )
    local = await measure(GpuWorker("tiny", device="cpu"), args)
    print(f"local worker:    {local['per_minute']:6.1f} pictures/min ({local['seconds']:.1f} s)")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray: local cluster started in {time.perf_counter() - started:.1f} s")
    try:
        results = {}
        for count in (1, 2):
            pool = RayPool("tiny", workers=count, gpus=0)
            started = time.perf_counter()
            results[count] = await measure(pool, args)
            print(
                f"ray, {count} painter{'s' if count > 1 else ' '}: "
                f"{results[count]['per_minute']:6.1f} pictures/min "
                f"({results[count]['seconds']:.1f} s; whole run with start-up "
                f"{time.perf_counter() - started:.1f} s)"
            )
    finally:
        ray.shutdown()
    print(
        f"scaling, 2 painters / 1 painter: {results[2]['per_minute'] / results[1]['per_minute']:.2f}x"
    )
    print(f"ray, 1 painter / local worker:   {results[1]['per_minute'] / local['per_minute']:.2f}x")
    local_ms = local["one_step_job"] * 1000
    ray_ms = results[1]["one_step_job"] * 1000
    print(
        f"one-step 32 px job, {args.overhead_jobs} in a row: local {local_ms:.1f} ms, "
        f"ray {ray_ms:.1f} ms per job; dispatch overhead {ray_ms - local_ms:.1f} ms per job"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per measurement")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--generator", default="vqgan")
    parser.add_argument("--overhead-jobs", type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(main_async(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
