"""Measure the blocked-concept filter with a real CLIP text encoder.

For each threshold, prints how many paraphrases of the blocked concepts are refused (catch rate)
and how many innocent art prompts are refused (false refusal rate), on the labelled list in
tests/bot/moderation/concept_eval.json. These are the numbers to quote, and to choose a default
guild threshold from.

    python benchmarks/concept_filter_eval.py --model ViT-B-32 --pretrained laion2b_s34b_b79k
    python benchmarks/concept_filter_eval.py --tiny        # plumbing check, numbers meaningless

Weights are never downloaded unless --allow-download is given; when they are not in the cache
the script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bot.moderation.concept_eval import EvalReport, load_eval_set, pick_threshold, sweep_thresholds

EXIT_NO_WEIGHTS = 2
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "tests/bot/moderation/concept_eval.json"
TINY_BANNER = (
    "TINY RANDOM MODEL: the CLIP weights are random, so the rates below are meaningless. This "
    "run only shows that the embedding, sweep and report plumbing works."
)


def parse_thresholds(text: str) -> list[float]:
    """ "start:stop:step" (stop inclusive) or a comma-separated list."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + i * step, 6) for i in range(max(count, 0))]
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--thresholds {text!r}: give start:stop:step (e.g. 0.5:0.95:0.05) or 0.7,0.8,0.9"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument(
        "--pretrained",
        default="laion2b_s34b_b79k",
        help="open_clip pretrained tag or a weights file",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="use the tiny random CLIP of IMAGINE_MODELS=tiny"
    )
    parser.add_argument(
        "--allow-download", action="store_true", help="fetch missing weights from the hub"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled prompt list")
    parser.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default=parse_thresholds("0.50:0.96:0.02"),
        help="cosine-similarity thresholds to try: start:stop:step or a comma list",
    )
    parser.add_argument(
        "--max-false-refusals",
        type=float,
        default=0.05,
        help="highest acceptable false refusal rate when suggesting a threshold",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    return parser


def load_embedder(args: argparse.Namespace) -> tuple[Callable[[list[str]], list[list[float]]], str]:
    """The text embedder to measure, and a description of it; exits 2 without weights."""
    # Imported here: the hub reads HF_HUB_OFFLINE when it is first imported.
    from generation.errors import GenerationError
    from generation.models import ModelsConfig, ModelStore

    if args.tiny:
        config = ModelsConfig.load("tiny")
    else:
        config = ModelsConfig.from_dict(
            {
                "clip": [{"model": args.model, "pretrained": args.pretrained}],
                "download": args.allow_download,
            },
            base_dir=Path.cwd(),
            source="the command line",
        )
    store = ModelStore(config, args.device)
    try:
        perceptor = store.perceptor()
    except GenerationError as error:
        print(f"cannot load CLIP {args.model}/{args.pretrained}: {error}", file=sys.stderr)
        if not args.allow_download:
            print(
                "Weights are only read from the cache here. On a machine with network access, "
                "run once with --allow-download, or pass --pretrained /path/to/weights.",
                file=sys.stderr,
            )
        sys.exit(EXIT_NO_WEIGHTS)

    def embed(texts: list[str]) -> list[list[float]]:
        features = perceptor.encode_text(texts)[0]  # [N, D], L2-normalised
        return features.cpu().tolist()

    return embed, f"{store.describe()} on {store.device}"


def print_report_table(reports: list[EvalReport]) -> None:
    concepts = [result.concept for result in reports[0].per_concept]
    short = [name if len(name) <= 14 else name[:13] + "~" for name in concepts]
    print(
        f"{'threshold':>9}  {'caught':>7}  {'false refusals':>14}  "
        + "  ".join(f"{s:>14}" for s in short)
    )
    for report in reports:
        per = "  ".join(f"{result.catch_rate:>14.0%}" for result in report.per_concept)
        print(
            f"{report.threshold:>9.3f}  {report.catch_rate:>7.0%}  "
            f"{report.false_refusal_rate:>14.0%}  {per}"
        )


def print_details(report: EvalReport) -> None:
    print(
        f"\nAt threshold {report.threshold:.3f}: {report.caught}/{report.paraphrases} paraphrases "
        f"caught, {report.false_refusals}/{report.innocent} innocent prompts refused."
    )
    for result in report.per_concept:
        print(
            f"  {result.concept}: caught {result.caught}/{result.paraphrases} "
            f"({result.caught_as_this} as this concept), {result.false_refusals} false refusals"
        )
    for prompt in report.missed:
        print(f"  missed: {prompt}")
    for prompt, concept, similarity in report.refused_innocent:
        print(f"  wrongly refused ({concept}, {similarity:.3f}): {prompt}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"  # no surprise downloads, and no hang without network
    data = load_eval_set(args.data)
    if args.tiny:
        print(TINY_BANNER)

    embed, described = load_embedder(args)
    started = time.perf_counter()
    reports = sweep_thresholds(embed, data, args.thresholds)
    elapsed = time.perf_counter() - started
    texts = (
        len(data.concepts) + len(data.innocent) + sum(len(c.should_refuse) for c in data.concepts)
    )
    print(f"CLIP {described}; {texts} texts embedded and swept in {elapsed:.2f} s")
    print(f"data: {args.data}\n")
    print_report_table(reports)

    best = pick_threshold(reports, args.max_false_refusals)
    if best is None:
        print(
            f"\nNo threshold refuses at most {args.max_false_refusals:.0%} of the innocent prompts."
        )
    else:
        print(
            f"\nBest catch rate with at most {args.max_false_refusals:.0%} false refusals: "
            f"threshold {best.threshold:.3f}"
        )
        print_details(best)
    if args.tiny:
        print("\n" + TINY_BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
