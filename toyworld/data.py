"""Dump toy-world renders as a dataset: a folder of PNGs, optionally with their captions.

    python -m toyworld.data --dump toy-train --n 20000 --seed 7             # images only
    python -m toyworld.data --dump toy-train --n 20000 --seed 7 --captions  # + captions.jsonl

Files are ``{seed}-{index:06d}.png``; ``captions.jsonl`` holds one
``{"image": name, "caption": "a red circle", "colour": ..., "shape": ..., "background": ...}``
per picture. The toy models are trained on seeds 0 (CLIP, VQGAN) and 3 (judge) and measured on
1 and 4: use other seeds for training sets of your own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from toyworld.render import render


def dump(folder: Path, n: int, seed: int, *, captions: bool = False) -> int:
    """Write renders 0..n-1 of ``seed`` into ``folder``; returns how many were written."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n):
        image, scene, caption = render(seed, index)
        name = f"{seed}-{index:06d}.png"
        Image.fromarray(image).save(folder / name)
        if captions:
            lines.append(json.dumps({
                "image": name, "caption": caption, "colour": scene.colour, "shape": scene.shape,
                "background": scene.background,
            }))  # fmt: skip
    if captions:
        (folder / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", type=Path, required=True, help="folder to write")
    parser.add_argument("--n", type=int, default=20000, help="how many pictures (20000)")
    parser.add_argument("--seed", type=int, default=7, help="data seed (7)")
    parser.add_argument("--captions", action="store_true", help="also write captions.jsonl")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be 1 or more")
    written = dump(args.dump, args.n, args.seed, captions=args.captions)
    print(f"wrote {written} renders of seed {args.seed} to {args.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
