"""Rebuild the toy world's models from nothing, then print their figures.

    python -m toyworld.build                    # judge CNN, toy CLIP, toy VQGAN, then figures
    python -m toyworld.build --only clip,vqgan  # some of them

Everything is deterministic (fixed seeds) and runs on a CPU, one thread, in about 20 minutes
all told (judge ~1 min, CLIP ~6 min, VQGAN ~10 min on one core). The artifacts land in
``toyworld/artifacts/`` and ``toyworld/toyworld.toml`` points at them.
"""

from __future__ import annotations

import argparse
import sys

from toyworld import evaluate, train_clip, train_judge, train_vqgan

STEPS = {"judge": train_judge.main, "clip": train_clip.main, "vqgan": train_vqgan.main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated: judge,clip,vqgan")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in STEPS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; choose from {', '.join(STEPS)}")
    for name in chosen:
        print(f"== {name}", flush=True)
        if STEPS[name]([]) != 0:
            return 1
    print("== figures", flush=True)
    return evaluate.main([])


if __name__ == "__main__":
    sys.exit(main())
