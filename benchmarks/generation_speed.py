"""Steps per second of our generation loop against a peer's loop, same models, same device.

    python benchmarks/generation_speed.py                 # 256 px, cutn 32, 5 measured steps
    python benchmarks/generation_speed.py --quick         # 2 measured steps, a smoke check
    python benchmarks/generation_speed.py --generators vqgan,diffusion

For VQGAN the models are the real architectures with random weights (speed does not depend on
the weights): open_clip ViT-B-32 and the f16 / 16384-code ImageNet VQGAN. "ours" is the engine's
own loop (``generation.engine.generate``); "nerdyrodent" is one step of nerdyrodent/VQGAN-CLIP's
generate.py with its default settings (frozen VQGAN and CLIP, fp32, its default "latest" cutouts
with kornia augments, Adam), written below from what that script does.

The two loops run interleaved, one step each in turn, so a busy machine slows both alike; warm-up
steps are not counted; medians and fastest steps are shown.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real_models import real_store  # noqa: E402
from generation.engine import generate  # noqa: E402
from generation.generators import generator_names, vqgan  # noqa: E402
from generation.loop import clamp_with_grad  # noqa: E402
from generation.models import ModelStore  # noqa: E402
from generation.request import GenerationRequest, RunControl  # noqa: E402

PROMPT = "a lighthouse in a storm, oil painting"


@dataclass
class Timings:
    """Seconds per step for each loop of one comparison."""

    name: str
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_name: str = "baseline"
    notes: str = ""


# A comparison is a function (args, device) -> Timings. Register yours in COMPARISONS.
Comparison = Callable[[argparse.Namespace, torch.device], Timings]


def interleaved(
    store: ModelStore,
    request: GenerationRequest,
    baseline_step: Callable[[], None],
    warmup: int,
    timings: Timings,
) -> Timings:
    """Run ``request`` through the real engine and, at the start of each of its steps, one
    baseline step, so both loops see the same machine load. Our step i is timed from the end
    of baseline step i to the start of our step i + 1 (the hook runs as a step starts), so
    ``request.steps`` must be one more than the steps to time."""
    measured = request.steps - 1
    last_end = [0.0]

    def between_steps() -> None:
        if timings.baseline:
            timings.ours.append(time.perf_counter() - last_end[0])
        if len(timings.baseline) < measured:
            start = time.perf_counter()
            baseline_step()
            timings.baseline.append(time.perf_counter() - start)
        last_end[0] = time.perf_counter()

    generate(request, store, RunControl(between_steps=between_steps))
    timings.ours = timings.ours[warmup:measured]
    timings.baseline = timings.baseline[warmup:measured]
    return timings


# --------------------------------------------------------------------------- VQGAN + CLIP


def vqgan_store(device: torch.device) -> ModelStore:
    """ViT-B-32 (random weights) + the f16 16384 VQGAN architecture (random weights)."""
    return real_store(device)


class NerdyrodentVQGANCLIP:
    """One optimisation step of nerdyrodent/VQGAN-CLIP's ``generate.py`` with its defaults,
    written here from what that script does (not copied): the VQGAN and CLIP frozen
    (``eval().requires_grad_(False)``), fp32, no autocast; the "latest" cutout method, its
    default, which pools the whole image to CLIP's size (average + max pooling, halved) once per
    cutout, then applies kornia's RandomAffine, RandomPerspective, ColorJitter and RandomErasing
    (its default augments Af, Pe, Ji, Er, with its settings) and adds noise of up to 0.1;
    cutn 32 (cut_pow is unused by that method); quantisation by nearest code through a one-hot
    matrix product; the spherical distance loss averaged over cutouts; Adam at lr 0.1; the
    latents clamped to the codebook's range after each step."""

    def __init__(self, store: ModelStore, request: GenerationRequest) -> None:
        import kornia.augmentation as K

        device = store.device
        self.model = vqgan.load_model(store).eval().requires_grad_(False)
        self.clip = store.perceptor().models[0]
        self.clip.model.eval().requires_grad_(False)
        size = self.clip.input_size
        self.cutn = request.cutn
        tokens = self.clip.tokenizer([PROMPT]).to(device)
        with torch.no_grad():
            self.target = self.clip.model.encode_text(tokens).float()  # [1, D]
        self.augment = torch.nn.Sequential(
            K.RandomAffine(
                degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True
            ),
            K.RandomPerspective(distortion_scale=0.7, p=0.7),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
            K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
        ).to(device)
        self.average = torch.nn.AdaptiveAvgPool2d((size, size))
        self.maximum = torch.nn.AdaptiveMaxPool2d((size, size))
        codebook = self.model.codebook  # [N, D]
        f = self.model.factor
        h, w = request.height // f, request.width // f
        codes = torch.randint(codebook.shape[0], (h * w,), device=device)
        one_hot = F.one_hot(codes, codebook.shape[0]).float()  # [h*w, N]
        z = (one_hot @ codebook).view(1, h, w, -1).permute(0, 3, 1, 2)  # [1, D, h, w]
        self.z = z.clone().requires_grad_(True)
        self.z_min = codebook.min(dim=0).values.view(1, -1, 1, 1)
        self.z_max = codebook.max(dim=0).values.view(1, -1, 1, 1)
        self.optimizer = torch.optim.Adam([self.z], lr=0.1)

    def cutouts(self, image: torch.Tensor) -> torch.Tensor:
        """image [1, 3, H, W] -> [cutn, 3, size, size]: the pooled whole image cutn times,
        augmented, with noise."""
        pooled = [(self.average(image) + self.maximum(image)) / 2 for _ in range(self.cutn)]
        batch = self.augment(torch.cat(pooled))
        noise = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, 0.1)
        return batch + noise * torch.randn_like(batch)

    def synth(self) -> torch.Tensor:
        codebook = self.model.codebook  # [N, D]
        flat = self.z.movedim(1, 3)  # [1, h, w, D]
        d = flat.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T
        one_hot = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype)  # [1, h, w, N]
        snapped = one_hot @ codebook  # [1, h, w, D]
        z_q = (flat + (snapped - flat).detach()).movedim(3, 1)  # straight-through gradient
        return clamp_with_grad(self.model.decode(z_q).add(1).div(2), 0, 1)  # [1, 3, H, W]

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        cutouts = self.clip.normalize(self.cutouts(self.synth()))
        embeds = self.clip.model.encode_image(cutouts).float()  # [cutn, D]
        a = F.normalize(embeds.unsqueeze(1), dim=2)  # [cutn, 1, D]
        b = F.normalize(self.target.unsqueeze(0), dim=2)  # [1, 1, D]
        loss = a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2).mean()
        loss.backward()
        self.optimizer.step()
        with torch.inference_mode():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))


def compare_vqgan(args: argparse.Namespace, device: torch.device) -> Timings:
    store = vqgan_store(device)
    request = GenerationRequest(
        prompt=PROMPT,
        seed=0,
        steps=args.warmup + args.steps + 1,
        width=args.size,
        height=args.size,
        cutn=args.cutn,
        progress_every=10**6,
    )
    baseline = NerdyrodentVQGANCLIP(store, request)
    timings = Timings(
        name=f"vqgan f16_16384 + ViT-B-32, {args.size} px, cutn {args.cutn}",
        baseline_name="nerdyrodent",
    )
    return interleaved(store, request, baseline.step, args.warmup, timings)


# --------------------------------------------------------------------------- the table

COMPARISONS: dict[str, Comparison] = {
    "vqgan": compare_vqgan,
}


def report(timings: Timings) -> str:
    """Medians, and minimums: on a shared machine the fastest step is the one least disturbed
    by other work, so both are shown."""
    ours_med, base_med = statistics.median(timings.ours), statistics.median(timings.baseline)
    ours_min, base_min = min(timings.ours), min(timings.baseline)
    lines = [
        f"{timings.name}  ({len(timings.ours)} measured steps each)",
        f"  {'':<9} {'median':>20}   {'fastest':>20}",
        f"  {'ours':<9} {1 / ours_med:8.3f} steps/s ({ours_med:6.2f} s)"
        f"   {1 / ours_min:8.3f} steps/s ({ours_min:6.2f} s)",
        f"  {timings.baseline_name:<9} {1 / base_med:8.3f} steps/s ({base_med:6.2f} s)"
        f"   {1 / base_min:8.3f} steps/s ({base_min:6.2f} s)",
        f"  speed-up  {base_med / ours_med:8.2f}x (median)   {base_min / ours_min:8.2f}x (fastest)",
    ]
    if timings.notes:
        lines.append(f"  {timings.notes}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per loop (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted steps first (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 measured steps: a smoke check")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per step (default 32)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--generators",
        default="vqgan",
        help=f"comma-separated, from: {', '.join(generator_names())} (default vqgan); those "
        f"with a peer loop ({', '.join(COMPARISONS)}) are also compared against it",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 2)
    known = generator_names()  # every generator is in the speed-and-memory table
    unknown = [g for g in args.generators.split(",") if g not in known]
    if unknown:
        parser.error(f"unknown generator(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    for generator in args.generators.split(","):
        if generator in COMPARISONS:
            print(report(COMPARISONS[generator](args, device)), flush=True)
    print_generators_table(args, device)
    return 0


# --------------------------------------------------------------------------- every generator:
# steps per second and peak memory (DIFFUSION helper's part)
#
# One run of each generator through the engine at the same size and cutn, on random weights
# with the real architectures: the ADM UNet of OpenAI's 256 px uncond model (the default
# prior), Stable Diffusion 1.x's UNet + VAE + text encoder, a 16 x 256 SIREN, and ViT-B-32 as
# the perceptor for all of them. Steps are timed from one step's start to the next (warm-up
# steps dropped); peak memory is the most the device held during the run, weights included (on
# a CPU: the process's peak resident memory so far, which only grows from one generator to the
# next).

RANDOM_ARCHITECTURES: dict[str, dict[str, object]] = {
    "diffusion": {
        "model": "random",
        "unet_config": "adm-256-uncond.json",
        "scheduler_config": "adm-scheduler.json",
    },
    "latent_diffusion": {
        "model": "random",
        "unet_config": "sd15-unet.json",
        "vae_config": "sd15-vae.json",
        "text_encoder_config": "sd15-text-encoder.json",
        "scheduler_config": "sd15-scheduler.json",
    },
    # DALL-E's published dVAE (dall_e's default sizes: 8192 codes, n_hid 256) and BigGAN-deep-256.
    "dvae": {"default": "openai", "models": {"openai": {"decoder": "random", "encoder": "random"}}},
    "biggan": {
        "default": "deep_256",
        "models": {"deep_256": {"config": "biggan-deep-256.json", "checkpoint": "random"}},
    },
}


@dataclass
class GeneratorSpeed:
    name: str
    seconds: list[float]  # per measured step
    peak_bytes: int
    peak_kind: str  # "GPU" or "RSS"


def measure_generator(
    generator: str, store: ModelStore, args: argparse.Namespace
) -> GeneratorSpeed:
    """Run one request through the engine and time every step after the warm-up."""
    request = GenerationRequest(
        prompt=PROMPT,
        seed=0,
        steps=args.warmup + args.steps + 1,
        width=args.size,
        height=args.size,
        cutn=args.cutn,
        generator=generator,
        progress_every=10**6,
    )
    starts: list[float] = []
    if store.device.type == "cuda":
        torch.cuda.synchronize(store.device)
        torch.cuda.reset_peak_memory_stats(store.device)

    def between_steps() -> None:
        if store.device.type == "cuda":
            torch.cuda.synchronize(store.device)  # time finished work, not queued kernels
        starts.append(time.perf_counter())

    generate(request, store, RunControl(between_steps=between_steps))
    steps = [b - a for a, b in zip(starts, starts[1:], strict=False)][args.warmup :]
    if store.device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(store.device), "GPU"
    else:
        import resource

        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "RSS"
    return GeneratorSpeed(generator, steps, peak, kind)


def generators_store(device: torch.device) -> ModelStore:
    """ViT-B-32 + the f16 16384 VQGAN (as above) + the random real architectures of ours: a
    fresh store per generator, so each peak counts its own weights and no one else's."""
    return real_store(device, **RANDOM_ARCHITECTURES)


def print_generators_table(args: argparse.Namespace, device: torch.device) -> None:
    """One row per generator, printed as soon as it is measured (a CPU run takes minutes).
    Medians and fastest steps, as in the comparisons: on a shared machine the fastest step is
    the one least disturbed by other work."""
    print(
        f"every generator at {args.size} px, cutn {args.cutn}, {args.steps} measured steps, "
        f"random weights\n"
        f"  {'generator':<17} {'median':>20}   {'fastest':>20}   {'peak memory':>14}",
        flush=True,
    )
    for name in args.generators.split(","):
        speed = measure_generator(name, generators_store(device), args)
        gc.collect()  # the store and its models go before the next generator loads its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
        median, fastest = statistics.median(speed.seconds), min(speed.seconds)
        print(
            f"  {speed.name:<17} {1 / median:8.3f} steps/s ({median:6.2f} s)"
            f"   {1 / fastest:8.3f} steps/s ({fastest:6.2f} s)"
            f"   {speed.peak_bytes / 2**30:6.2f} GiB {speed.peak_kind}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
