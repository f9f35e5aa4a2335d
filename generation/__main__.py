"""Generate one picture from the command line, with the same engine the bot uses.

    python -m generation "a lighthouse in a storm" -o out.png --steps 200 --size 384x256

Exit codes: 0 done, 1 the run failed (missing weights, out of memory, ...), 2 bad arguments,
130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from generation.errors import BadRequest, GenerationCancelled, GenerationError
from generation.generators import generator_names
from generation.png import encode_png
from generation.prompts import parse_prompts
from generation.request import (
    MAX_SEED,
    GenerationRequest,
    Progress,
    RunControl,
    check_request,
)

if TYPE_CHECKING:
    from generation.models import ModelsConfig

log = logging.getLogger("generation")

# Used for what neither the command line nor the models file's [defaults] table says.
DEFAULTS = {"steps": 250, "size": "256x256", "cutn": 32, "generator": "vqgan"}
# Output file suffix -> PIL format. PNG keeps the settings in text chunks, JPEG in its comment.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95


class UsageError(Exception):
    """A bad command line: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the whole usage and exits; one line and code 2 from main() instead.
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m generation",
        description="Paint a picture from a text prompt with CLIP guidance.",
        epilog="Prompt syntax: 'text:weight:stop | text:weight', e.g. 'a castle | fog:-0.5'. "
        "IMAGINE_MODELS names the models TOML (or 'tiny').",
    )
    parser.add_argument("prompt", help="what to paint, e.g. 'a lighthouse in a storm'")
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="file to write: .png (with the "
        "settings in its metadata) or .jpg/.jpeg (settings in its comment)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, help=f"optimisation steps (default {DEFAULTS['steps']})"
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        metavar="WxH|N",
        help=f"e.g. 384x256 or 256 (default {DEFAULTS['size']})",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: a random one, printed)")
    parser.add_argument("--cutn", type=int, help=f"cutouts per step (default {DEFAULTS['cutn']})")
    parser.add_argument("--cut-pow", type=float, default=1.0, help="cutout size power (default 1)")
    parser.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="N",
        help="also save every N-th step as OUTPUT-STEP.png (default: only the result)",
    )
    parser.add_argument(
        "--models",
        default=os.environ.get("IMAGINE_MODELS"),
        help="models TOML file or 'tiny' (default: $IMAGINE_MODELS, else the built-in models)",
    )
    parser.add_argument(
        "--generator",
        help=f"one of {', '.join(generator_names())} (default: the models file's [defaults], "
        f"else {DEFAULTS['generator']})",
    )
    parser.add_argument("--init-image", type=str, help="start from this image file")
    parser.add_argument(
        "--init-weight", type=float, default=0.0, help="keep pulling toward the init image"
    )
    parser.add_argument(
        "--strength",
        type=float,
        help="diffusion generators: how much of the init image to paint over, above 0 to 1 "
        "(default: the generator's, 0.5 pixel diffusion, 0.75 latent diffusion)",
    )
    parser.add_argument(
        "--image-prompt",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT[:STOP]]",
        help="an image to steer toward (repeatable)",
    )
    parser.add_argument(
        "--noise-prompt",
        action="append",
        default=[],
        type=parse_noise_prompt,
        metavar="SEED:WEIGHT",
        help="a random direction to steer toward or away from (repeatable)",
    )
    parser.add_argument("--lr", type=float, help="learning rate (default: the generator's)")
    parser.add_argument(
        "--optimizer", default="adam", choices=("adam", "adamw", "sgd"), help="default adam"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            side = int(parts[0])
            return side, side
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"size {text!r} is not WxH or N, e.g. 384x256 or 256")


def parse_noise_prompt(text: str) -> tuple[int, float]:
    seed, _, weight = text.partition(":")
    try:
        return int(seed), float(weight or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"noise prompt {text!r} is not SEED:WEIGHT") from None


def request_from_args(
    args: argparse.Namespace, defaults: Mapping[str, Any] | None = None
) -> GenerationRequest:
    """The request the command line asks for; what it leaves out comes from ``defaults``
    (the models file's [defaults]) and then from DEFAULTS."""
    merged = {**DEFAULTS, **(defaults or {})}
    try:
        size = args.size or parse_size(str(merged["size"]))
    except argparse.ArgumentTypeError as error:
        raise BadRequest(f"[defaults] {error}") from None
    seed = args.seed if args.seed is not None else random.SystemRandom().randint(0, 2**31 - 1)
    if not 0 <= seed <= MAX_SEED:
        raise BadRequest(f"seed must be between 0 and {MAX_SEED}, not {seed}")
    if args.save_every < 0:
        raise BadRequest(f"--save-every must be 0 (off) or more, not {args.save_every}")
    width, height = size
    return GenerationRequest(
        prompt=args.prompt,
        seed=seed,
        steps=args.steps if args.steps is not None else int(merged["steps"]),
        width=width,
        height=height,
        generator=args.generator or str(merged["generator"]),
        cutn=args.cutn if args.cutn is not None else int(merged["cutn"]),
        cut_pow=args.cut_pow,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        init_image=args.init_image,
        init_weight=args.init_weight,
        strength=args.strength,
        image_prompts=tuple(args.image_prompt),
        noise_prompts=tuple(args.noise_prompt),
        progress_every=1,
    )


def frame_path(output: Path, step: int) -> Path:
    return output.with_name(f"{output.stem}-{step:04d}{output.suffix}")


def check_output(output: Path) -> None:
    """Refuse an output name whose format we do not write, before any model loads."""
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise BadRequest(
            f"cannot write {output.name!r}: give -o a file name ending in "
            f"{', '.join(OUTPUT_FORMATS)}"
        )


def encode_image(image: Image.Image, metadata: dict[str, str], output: Path) -> bytes:
    """The picture in the format of ``output``'s suffix, its settings kept inside."""
    if OUTPUT_FORMATS[output.suffix.lower()] == "PNG":
        return encode_png(image, metadata)
    out = io.BytesIO()
    comment = json.dumps(metadata, ensure_ascii=False)
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY, comment=comment)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        parse_prompts(args.prompt)  # a bad prompt fails before torch is even imported
        from generation.models import ModelsConfig

        config = ModelsConfig.load(args.models)
        request = request_from_args(args, config.defaults)
        check_request(request, known_generators=generator_names())
        check_output(args.output)
    except (UsageError, BadRequest) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return _run(args, request, config)
    except BadRequest as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except GenerationCancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except GenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, request: GenerationRequest, config: ModelsConfig) -> int:
    # Heavy imports after the arguments are known to be good: a typo fails in a blink.
    from tqdm import tqdm

    from generation.engine import generate
    from generation.models import ModelStore
    from generation.png import request_metadata

    store = ModelStore(config, args.device)
    print(f"seed {request.seed}, {store.device}, models {store.describe()}", file=sys.stderr)
    store.perceptor()  # load before the bar starts, so its ETA measures steps, not loading
    bar = tqdm(
        total=request.steps, unit="step", disable=args.quiet, file=sys.stderr, dynamic_ncols=True
    )

    def on_progress(progress: Progress) -> None:
        # A generator may count in its own units (clipgen: token rows, diffusion: steps left
        # after the skipped ones): the bar follows the total each frame reports.
        if bar.total != progress.total:
            bar.total = progress.total
        bar.update(progress.step - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.3f}", refresh=False)
        if args.save_every and progress.step % args.save_every == 0:
            meta = request_metadata(request, store.describe(), request.generator)
            meta["step"] = str(progress.step)
            frame = frame_path(args.output, progress.step)
            frame.write_bytes(encode_image(progress.image, meta, frame))

    try:
        result = generate(request, store, RunControl(on_progress=on_progress))
    finally:
        bar.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(encode_image(result.image, result.metadata, args.output))
    score = "n/a" if result.clip_score is None else f"{result.clip_score:.3f}"
    print(
        f"wrote {args.output} ({result.steps_done} steps in {result.elapsed:.1f} s, "
        f"CLIP score {score})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
