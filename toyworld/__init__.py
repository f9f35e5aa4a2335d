"""The toy world: 32 px pictures of one coloured shape on another colour, where the truth is known.

Benchmarks measure whether a generator paints what the prompt says here, on a CPU in minutes:

- ``toyworld.render``: the deterministic renderer, (seed, index) -> picture, labels, caption.
- ``toyworld.data``: ``python -m toyworld.data --dump DIR --n N --seed S`` writes a dataset.
- ``toyworld.judge``: says whether a picture shows 'a red circle' without any CLIP (HSV colour
  rules, a small shape CNN on the largest blob of the dominant colour).
- ``toyworld.build``: ``python -m toyworld.build`` trains the judge's CNN, the toy CLIP and the
  toy VQGAN into ``toyworld/artifacts/`` and prints their held-out figures.
- ``toyworld/toyworld.toml``: a models TOML pointing the project at the toy CLIP and VQGAN.

It is development tooling like ``generation.train``: it may import torch and ``generation``,
never ``bot`` or ``db`` (tests/test_layering.py), and nothing in ``generation`` imports it.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
TOML = HERE / "toyworld.toml"
