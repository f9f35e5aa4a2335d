"""Does a generator paint what the prompt says? A toy-world table of judged pictures.

    python benchmarks/quality.py                      # every generator, the toy world's 8 x 4
    python benchmarks/quality.py --generators vqgan,clipgen --clipgen-model /path/to/model-dir
    python benchmarks/quality.py --records runs.jsonl  # resumable: split a long run into parts

For each generator it paints the toy world's 8 prompts ('a red circle', ..., see
toyworld/__init__.py and docs/benchmarks.md) x 4 seeds through the engine (``generation.engine.generate``, the
same call the CLI and the bot make), with the toy world's models TOML (its toy CLIP and toy
VQGAN, its [defaults]: 32 px, 300 steps, cutn 32). Every picture is scored by the toy world's
judge (``toyworld.judge``: colour by HSV rules, shape by a small CNN, never the toy CLIP a generator
optimises against), and the table gives colour / shape / both-correct rates with their standard
errors, and seconds per picture (generation only: models are loaded before the clock starts)
with the ratio to vqgan's.

Generators: any name the engine knows, plus ``clipgen+refine`` (clipgen with ``refine_steps``
VQGAN+CLIP steps from its best candidate; plain ``clipgen`` runs with refine_steps = 0). The
clipgen model is the TOML's ``[generators.clipgen] model``, or ``--clipgen-model DIR``; without
either, the clipgen rows are skipped with a line saying so. Settings tuned for the toy world are
options here or keys of the TOML, never the project's defaults.

With ``--records FILE`` every judged picture is appended to FILE as one JSON line as soon as it
is done, and rows already there (same generator, prompt, seed and settings) are not painted
again: a run killed by a time limit resumes where it stopped, and the table covers them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.engine import generate  # noqa: E402
from generation.generators import generator_names, get_generator  # noqa: E402
from generation.models import ModelsConfig, ModelStore  # noqa: E402
from generation.request import GenerationRequest, RunControl  # noqa: E402

DEFAULT_TOML = ROOT / "toyworld" / "toyworld.toml"  # the repo's toy world (toyworld/)
# The toy world README's prompts, in its order.
PROMPTS = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a green star",
    "a purple cross",
    "an orange circle",
    "a white square",
    "a black triangle",
)
SEEDS = (0, 1, 2, 3)
DEFAULT_GENERATORS = "clipgen,clipgen+refine,vqgan,pixels,fourier,siren"
REFINED = "clipgen+refine"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the table: a generator and the settings of its TOML section."""

    name: str
    generator: str
    section: dict[str, Any]

    def key(self, request: GenerationRequest) -> str:
        """What decides this variant's pictures, so stored records are reused only for the
        same settings."""
        text = json.dumps([self.generator, self.section, dataclasses.asdict(request)], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_judge(toml: Path) -> ModuleType:
    """The toy world's judge: ``toyworld.judge`` for the repo's world; for a world kept
    elsewhere, the judge.py next to its TOML (it imports its sibling data.py, so that folder
    goes on the path)."""
    folder = toml.resolve().parent
    if folder == DEFAULT_TOML.parent:
        from toyworld import judge  # noqa: PLC0415 - only this world's runs need torch here

        return judge
    path = folder / "judge.py"
    if not path.is_file():
        raise SystemExit(f"no judge.py next to {toml}: point --models at the toy world's TOML")
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("toyworld_judge", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variants(args: argparse.Namespace, config: ModelsConfig) -> list[Variant]:
    """The requested rows; clipgen ones are dropped (with a line) when no model is configured."""
    clipgen = dict(config.generator_section("clipgen"))
    if args.clipgen_model:
        clipgen["model"] = str(Path(args.clipgen_model).resolve())
    for key in ("candidates", "temperature", "top_k", "top_p", "batch_size", "guidance", "ema"):
        value = getattr(args, key)
        if value is not None:
            clipgen[key] = value
    out = []
    for name in args.generators.split(","):
        if name in ("clipgen", REFINED):
            if "model" not in clipgen:
                print(
                    f"{name}: skipped (no clipgen model: give --clipgen-model DIR or set "
                    f"[generators.clipgen] model in {args.models})",
                    flush=True,
                )
                continue
            refine = args.refine_steps if name == REFINED else 0
            out.append(Variant(name, "clipgen", {**clipgen, "refine_steps": refine}))
        elif name in generator_names():
            out.append(Variant(name, name, dict(config.generator_section(name))))
        else:
            known = ", ".join((*generator_names(), REFINED))
            raise SystemExit(f"unknown generator {name!r}; choose from {known}")
    return out


def base_request(args: argparse.Namespace, config: ModelsConfig) -> GenerationRequest:
    """The toy TOML's [defaults] (size, steps, cutn), overridden by the options."""
    defaults = config.defaults
    size = str(defaults.get("size", "32x32")).lower().split("x")
    width, height = int(size[0]), int(size[-1])
    return GenerationRequest(
        prompt=PROMPTS[0],
        steps=args.steps or int(defaults.get("steps", 300)),
        width=width,
        height=height,
        cutn=args.cutn or int(defaults.get("cutn", 32)),
        progress_every=10**6,
    )


def read_records(path: Path | None) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    if path is None or not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            records[(r["variant"], r["prompt"], r["seed"], r["key"])] = r
    return records


def paint_and_judge(
    variant: Variant,
    config: ModelsConfig,
    base: GenerationRequest,
    args: argparse.Namespace,
    judge: ModuleType,
    records: dict[tuple[str, str, int, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Every prompt x seed of one variant: from the records when already there, else painted,
    judged and appended to them."""
    sections = {**config.generators, variant.generator: variant.section}
    store = ModelStore(dataclasses.replace(config, generators=sections), args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    loaded = False
    for prompt in PROMPTS[: args.prompts]:
        for seed in seeds:
            request = base.replace(prompt=prompt, seed=seed, generator=variant.generator)
            key = variant.key(request)
            done = records.get((variant.name, prompt, seed, key))
            if done is not None:
                rows.append(done)
                continue
            if not loaded:
                # Load every model before the clock starts: seconds are painting only.
                get_generator(variant.generator).check(request, store)
                store.perceptor()
                loaded = True
            started = time.perf_counter()
            result = generate(request, store, RunControl())
            seconds = time.perf_counter() - started
            verdict = judge.judge([np.asarray(result.image.convert("RGB"))], [prompt])[0]
            row = {
                "variant": variant.name,
                "prompt": prompt,
                "seed": seed,
                "key": key,
                "seconds": seconds,
                "size": f"{result.image.width}x{result.image.height}",
                **{k: bool(verdict[k]) for k in ("colour_correct", "shape_correct", "correct")},
                "dominant_colour": verdict["dominant_colour"],
                "shape_pred": verdict["shape_pred"],
            }
            rows.append(row)
            if args.records is not None:
                with args.records.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(row) + "\n")
            if args.save_dir is not None:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                slug = prompt.replace(" ", "-")
                result.image.save(args.save_dir / f"{variant.name}-{slug}-{seed}.png")
            if args.verbose:
                print(f"  {variant.name} {prompt!r} seed {seed}: {verdict['correct']} "
                      f"({verdict['dominant_colour']} {verdict['shape_pred']}, {seconds:.2f} s)",
                      flush=True)  # fmt: skip
    return rows


def rate(rows: list[dict[str, Any]], key: str) -> str:
    """Proportion with its standard error sqrt(p (1 - p) / n)."""
    n = len(rows)
    p = sum(r[key] for r in rows) / n
    return f"{p:.2f} ± {math.sqrt(p * (1 - p) / n):.2f}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    vqgan = results.get("vqgan")
    vqgan_seconds = sum(r["seconds"] for r in vqgan) / len(vqgan) if vqgan else None
    lines = [
        f"{'generator':<16} {'n':>3}  {'colour':>11}  {'shape':>11}  {'both':>11}  "
        f"{'s/picture':>9}  {'x vqgan':>8}"
    ]
    for name, rows in results.items():
        seconds = sum(r["seconds"] for r in rows) / len(rows)
        ratio = f"{seconds / vqgan_seconds:8.3f}" if vqgan_seconds else f"{'n/a':>8}"
        lines.append(
            f"{name:<16} {len(rows):>3}  {rate(rows, 'colour_correct'):>11}  "
            f"{rate(rows, 'shape_correct'):>11}  {rate(rows, 'correct'):>11}  "
            f"{seconds:9.3f}  {ratio}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_TOML, help="toy world TOML")
    parser.add_argument("--generators", default=DEFAULT_GENERATORS, help="comma-separated")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="default 0,1,2,3")
    parser.add_argument(
        "--prompts", type=int, default=len(PROMPTS), help="the first N prompts (default 8)"
    )
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the TOML's)")
    parser.add_argument("--cutn", type=int, help="cutouts per step (default: the TOML's)")
    parser.add_argument("--clipgen-model", help="clipgen model dir (default: the TOML's)")
    parser.add_argument(
        "--refine-steps", type=int, default=100, help="VQGAN steps of clipgen+refine (100)"
    )
    parser.add_argument("--candidates", type=int, help="clipgen candidates (default: TOML's)")
    parser.add_argument("--batch-size", type=int, help="clipgen candidates per batch")
    parser.add_argument("--temperature", type=float, help="clipgen sampling temperature")
    parser.add_argument("--top-k", type=int, help="clipgen top-k")
    parser.add_argument("--top-p", type=float, help="clipgen top-p")
    parser.add_argument(
        "--guidance", type=float, help="clipgen classifier-free guidance (1.0: off)"
    )
    parser.add_argument(
        "--raw-weights",
        dest="ema",
        action="store_const",
        const=False,
        help="clipgen: sample with the raw weights, not the EMA ones",
    )
    parser.add_argument("--records", type=Path, help="JSONL of judged pictures (resumable)")
    parser.add_argument("--save-dir", type=Path, help="also save every picture here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per picture")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = ModelsConfig.load(str(args.models))
    judge = load_judge(args.models)
    base = base_request(args, config)
    chosen = variants(args, config)
    records = read_records(args.records)
    print(
        f"toy world {args.models}: {args.prompts} prompts x seeds {args.seeds}, "
        f"{base.width}x{base.height}, {base.steps} steps, cutn {base.cutn}",
        flush=True,
    )
    results = {}
    for variant in chosen:
        results[variant.name] = paint_and_judge(variant, config, base, args, judge, records)
        print(table({variant.name: results[variant.name]}).splitlines()[1], flush=True)
    if results:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
