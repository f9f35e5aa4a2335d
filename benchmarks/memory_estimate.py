"""GPU memory each generator needs at 256 and 512 px, computed (not measured on a GPU).

    python benchmarks/memory_estimate.py                  # every generator, 256 and 512 px
    python benchmarks/memory_estimate.py --generators vqgan diffusion --cutn 64
    python benchmarks/memory_estimate.py --check-cpu      # also one real CPU step of vqgan
                                                          # at 256 px, to check the accounting

The real architectures of the default models (generation/configs/defaults.toml) are built on
PyTorch's meta device: every tensor has its shape and dtype but no storage, so nothing is
allocated and nothing is computed, yet every operator runs its shape logic and autograd
records the same graph it records on a GPU. One step of each generator at batch 1 then runs
on those tensors exactly as the generator's loop runs it (the project's own functions: the
VQGAN's quantise + decode, BigGAN's per-layer synthesis, the dVAE decoder, the ADM UNet's
prediction of the clean image, the cutouts and CLIP loss of generation/guidance.py), and
``torch.autograd.graph.saved_tensors_hooks`` adds up the bytes of every tensor autograd keeps
for the backward pass (each storage once, the parameters not again). Those are alive together
when the forward pass ends, the peak of a step.

Per generator and size the table gives:

- weights: the generator's parameters and buffers, plus CLIP ViT-B-32 (the perceptor, always
  resident);
- activations: what autograd saves during one step (the formula above);
- inputs: the optimised tensor, its gradient and Adam's two moments;
- total = weights + activations + inputs.

All in fp32 (CLIP under bf16 autocast on a GPU, the default ``[cuda] autocast = "auto"``, keeps
its matmul weights and most of its activations in half the bytes, so the fp32 figures are the
upper end). Not counted: the backward pass's transient gradient buffers (of the order of the
largest activation, not their sum), cuDNN workspaces, the CUDA context (~0.3-0.5 GB) and the
caching allocator's slack; leave a margin of ~1 GB.

CLIP-GEN samples without gradients: its row is the GPT's weights, the KV cache of its
candidates over the 16 x 16 tokens (computed from the architecture), and the largest single
operator (inputs + output) of decoding one batch of candidates with its VQGAN and ranking them
with CLIP, a lower bound of that transient. It paints 256 px only (its published model's token
grid); so do the 256 px models of BigGAN and ADM, and their 512 px rows use the 512 px models.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.cutouts import Cutouts  # noqa: E402
from generation.guidance import ClipGuide, Targets, batched_losses  # noqa: E402
from generation.loop import clamp_with_grad  # noqa: E402
from generation.models_config import CONFIG_DIR  # noqa: E402
from generation.perceptor import Perceptor, PerceptorModel  # noqa: E402

META = torch.device("meta")
GB = 1e9
SIZES = (256, 512)
GENERATORS = ("vqgan", "dvae", "biggan", "diffusion", "clipgen")
# The models defaults.toml names, per generator and picture size.
VQGAN_YAML = CONFIG_DIR / "vqgan_imagenet_f16_16384.yaml"
BIGGAN_JSON = {256: CONFIG_DIR / "biggan-deep-256.json", 512: CONFIG_DIR / "biggan-deep-512.json"}
ADM_JSON = {256: CONFIG_DIR / "adm-256-uncond.json", 512: CONFIG_DIR / "adm-512-uncond.json"}
DVAE_ARCH = {"n_init": 128, "n_hid": 256, "n_blk_per_group": 2, "vocab_size": 8192}
CLIPGEN_GRID = 16  # HFAiLab's COCO model: 16 x 16 tokens of an f16 VQGAN, 256 px


@dataclass
class Row:
    generator: str
    size: int
    model: str
    weights: int  # bytes
    activations: int
    inputs: int
    note: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.inputs


# --------------------------------------------------------------------------- accounting


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each storage once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def _storage_keys(module: nn.Module) -> set[int]:
    return {t.untyped_storage()._cdata for t in [*module.parameters(), *module.buffers()]}


@contextlib.contextmanager
def saved_activations(*modules: nn.Module) -> Iterator[dict[str, int]]:
    """Count the bytes of every tensor autograd saves inside the block (each storage once;
    the modules' own parameters and buffers are weights, not activations). The count is in
    ``result["bytes"]`` when the block ends."""
    weights = set().union(*(_storage_keys(m) for m in modules))
    saved: dict[int, int] = {}
    # Saved tensors are kept alive by the list, so their storages' ids cannot be reused.
    keep: list[torch.Tensor] = []
    result = {"bytes": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
            keep.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["bytes"] = sum(saved.values())
    keep.clear()


class LargestOperator(TorchDispatchMode):
    """The largest inputs + output of any single operator run inside it (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
        self.largest = max(self.largest, sum(storages.values()))
        return out


def adam_inputs(*tensors: torch.Tensor) -> int:
    """The optimised tensors, their gradients and Adam's two moments: 4 copies."""
    return 4 * sum(t.numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------- models


def clip_perceptor() -> tuple[Perceptor, nn.Module]:
    """open_clip ViT-B-32 on the meta device, as the perceptor holds it."""
    import open_clip

    with torch.device(META):
        model = open_clip.create_model("ViT-B-32", device=META).eval().requires_grad_(False)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(preprocess["mean"], device=META).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"], device=META).view(1, 3, 1, 1)
    size = preprocess["size"]
    model_info = PerceptorModel(
        name="ViT-B-32/meta",
        model=model,
        tokenizer=None,
        weight=1.0,
        input_size=size if isinstance(size, int) else int(size[0]),
        mean=mean,
        std=std,
    )
    return Perceptor([model_info]), model


def guide_for(perceptor: Perceptor, cutn: int) -> ClipGuide:
    """The CLIP loss of one text prompt with ``cutn`` augmented cutouts (the request's
    defaults), its random draws from a CPU generator."""
    targets = Targets(
        embeds=F.normalize(torch.ones(1, 512, device=META), dim=-1),
        weights=torch.ones(1, device=META),
        stops=torch.full((1,), -float("inf"), device=META),
    )
    return ClipGuide(perceptor, [targets], Cutouts(cutn), torch.Generator().manual_seed(0))


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device. A module that places its own tensors on the CPU
    (dall_e's layers do) is moved there as empty storage-less tensors."""
    with torch.device(META):
        module = build()
    return module.to_empty(device=META).eval().requires_grad_(False)


# --------------------------------------------------------------------------- steps


def vqgan_row(size: int, guide: ClipGuide, clip: nn.Module) -> Row:
    from generation.generators import vqgan

    model = on_meta(lambda: vqgan.build_from_yaml(VQGAN_YAML))
    latents = torch.zeros(1, model.codebook.shape[1], size // 16, size // 16, device=META)
    latents.requires_grad_(True)
    with saved_activations(model, clip) as saved:
        snapped = vqgan.quantize(latents, model.codebook)
        image = clamp_with_grad((model.decode(snapped).float() + 1) / 2)  # [1, 3, S, S]
        loss = batched_losses([guide], image).sum()
    loss.backward()
    weights = tensor_bytes(model) + tensor_bytes(clip)
    return Row("vqgan", size, "imagenet_f16_16384", weights, saved["bytes"], adam_inputs(latents))


def dvae_row(size: int, guide: ClipGuide, clip: nn.Module) -> Row:
    from generation.generators import dvae

    decoder = on_meta(lambda: dvae.build_decoder(DVAE_ARCH))
    model = dvae.DVAE(decoder, "openai", DVAE_ARCH)
    logits = torch.zeros(1, DVAE_ARCH["vocab_size"], size // 8, size // 8, device=META)
    logits.requires_grad_(True)
    with saved_activations(model, clip) as saved:
        image = model.decode(torch.softmax(logits, dim=1))  # [1, 3, S, S]
        loss = batched_losses([guide], image).sum()
    loss.backward()
    weights = tensor_bytes(model) + tensor_bytes(clip)
    return Row("dvae", size, "openai", weights, saved["bytes"], adam_inputs(logits))


def biggan_row(size: int, guide: ClipGuide, clip: nn.Module) -> Row:
    from generation.generators import biggan

    model = on_meta(lambda: biggan.build_from_json(BIGGAN_JSON[size]))
    rows = biggan.input_count(model)
    latents = torch.zeros(rows, model.config.z_dim, device=META).requires_grad_(True)
    logits = torch.zeros(rows, model.config.num_classes, device=META).requires_grad_(True)
    with saved_activations(model, clip) as saved:
        classes = torch.sigmoid(logits)  # [L, C]
        image = biggan.synthesize(model, latents, classes, 1.0)  # [1, 3, S, S]
        loss = batched_losses([guide], image).sum()
        loss = loss + biggan.latent_regulariser(latents) + biggan.class_regulariser(classes)
    loss.backward()
    weights = tensor_bytes(model) + tensor_bytes(clip)
    name = f"deep_{size}"
    return Row("biggan", size, name, weights, saved["bytes"], adam_inputs(latents, logits))


def diffusion_row(size: int, guide: ClipGuide, clip: nn.Module) -> Row:
    from generation.adm_unet import ADMConfig, ADMUNet
    from generation.generators import diffusion

    unet = on_meta(lambda: ADMUNet(ADMConfig.from_json(ADM_JSON[size])))
    x_t = torch.zeros(1, 3, size, size, device=META).requires_grad_(True)
    t = torch.full((1,), 500, device=META, dtype=torch.long)
    alpha_bar = torch.full((), 0.5, device=META)
    with saved_activations(unet, clip) as saved:
        output = diffusion.predict(unet, x_t, t)  # [1, 6, S, S]
        eps, _ = diffusion.split_variance(output, 3)
        original = diffusion.predicted_original(eps, x_t, alpha_bar)  # [1, 3, S, S]
        image = clamp_with_grad((original + 1) / 2)
        loss = batched_losses([guide], image).sum()
    (grad,) = torch.autograd.grad(loss, x_t)
    weights = tensor_bytes(unet) + tensor_bytes(clip)
    # The sample, its gradient and the scheduler's copies: no optimiser state.
    inputs = 4 * x_t.numel() * x_t.element_size()
    name = "openai_256_uncond" if size == 256 else "openai_512_uncond"
    return Row("diffusion", size, name, weights, saved["bytes"], inputs)


def clipgen_row(size: int, guide: ClipGuide, clip: nn.Module, candidates: int) -> Row:
    from generation.clipgen_model import PRESETS, ClipGen, ClipGenConfig
    from generation.generators import vqgan

    # HFAiLab's gpt_coco.pt as generation/clipgen_hfai.py reads it: GPT-2 medium's shape,
    # exact GELU, an output head of its own (not tied to the token embedding).
    medium = PRESETS["medium"]
    config = ClipGenConfig(
        vocab_size=16384,
        grid_h=CLIPGEN_GRID,
        grid_w=CLIPGEN_GRID,
        cond_dim=512,
        n_prefix=1,
        n_layer=medium["n_layer"],
        n_head=medium["n_head"],
        n_embd=medium["n_embd"],
        dropout=0.0,
        activation="gelu",
        tied_head=False,
    )
    gpt = on_meta(lambda: ClipGen(config))
    tokenizer = on_meta(lambda: vqgan.build_from_yaml(VQGAN_YAML))
    tokens = config.n_prefix + CLIPGEN_GRID * CLIPGEN_GRID
    # Keys and values of every layer for every candidate, fp32.
    kv_cache = 2 * config.n_layer * candidates * tokens * config.n_embd * 4
    largest = LargestOperator()
    with torch.no_grad(), largest:
        latents = torch.zeros(candidates, 256, CLIPGEN_GRID, CLIPGEN_GRID, device=META)
        pictures = ((tokenizer.decode(latents).float() + 1) / 2).clamp(0, 1)
        guide.perceptor.embed(0, F.interpolate(pictures, size=224, mode="bilinear"))
    weights = tensor_bytes(gpt) + tensor_bytes(tokenizer) + tensor_bytes(clip)
    note = (
        f"{candidates} candidates; activations: KV cache {kv_cache / GB:.2f} GB + largest "
        f"decode/rank operator {largest.largest / GB:.2f} GB"
    )
    return Row("clipgen", 256, "gpt_coco (GPT-2 medium)", weights, kv_cache + largest.largest, 0,
               note)  # fmt: skip


def cpu_check(cutn: int) -> None:
    """One real VQGAN step at 256 px on the CPU: its saved bytes must equal the meta count."""
    import open_clip

    from generation.generators import vqgan

    model = vqgan.build_from_yaml(VQGAN_YAML).eval().requires_grad_(False)
    clip = open_clip.create_model("ViT-B-32").eval().requires_grad_(False)
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    info = PerceptorModel(
        "ViT-B-32/cpu",
        clip,
        None,
        1.0,
        224,
        torch.tensor(preprocess["mean"]).view(1, 3, 1, 1),
        torch.tensor(preprocess["std"]).view(1, 3, 1, 1),
    )
    targets = Targets(
        F.normalize(torch.ones(1, 512), dim=-1), torch.ones(1), torch.full((1,), -1e9)
    )
    guide = ClipGuide(Perceptor([info]), [targets], Cutouts(cutn), torch.Generator().manual_seed(0))
    latents = torch.randn(1, 256, 16, 16).requires_grad_(True)
    with saved_activations(model, clip) as saved:
        image = clamp_with_grad((model.decode(vqgan.quantize(latents, model.codebook)) + 1) / 2)
        loss = batched_losses([guide], image).sum()
    loss.backward()
    print(f"CPU check, vqgan 256 px, one real step: activations {saved['bytes'] / GB:.3f} GB")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per step (default 32)")
    parser.add_argument("--candidates", type=int, default=16, help="clipgen's (default 16)")
    parser.add_argument("--check-cpu", action="store_true", help="also a real CPU vqgan step")
    args = parser.parse_args(argv)

    perceptor, clip = clip_perceptor()
    guide = guide_for(perceptor, args.cutn)
    rows: list[Row] = []
    for name in args.generators:
        if name == "clipgen":
            rows.append(clipgen_row(256, guide, clip, args.candidates))
            continue
        build = {"vqgan": vqgan_row, "dvae": dvae_row, "biggan": biggan_row}.get(name)
        for size in SIZES:
            rows.append((build or diffusion_row)(size, guide, clip))

    print(f"GPU memory per generator, batch 1, cutn {args.cutn}, fp32, CLIP ViT-B-32")
    print(f"(CLIP ViT-B-32 alone: {tensor_bytes(clip) / GB:.2f} GB of weights, in every row)")
    print("computed on the meta device (not measured on a GPU); GB = 10^9 bytes")
    print(f"{'generator':<10} {'px':>4} {'model':<24} {'weights':>8} {'activ.':>8} "
          f"{'inputs':>8} {'total':>8}  note")  # fmt: skip
    for r in rows:
        print(
            f"{r.generator:<10} {r.size:>4} {r.model:<24} {r.weights / GB:>8.2f} "
            f"{r.activations / GB:>8.2f} {r.inputs / GB:>8.3f} {r.total / GB:>8.2f}  {r.note}"
        )
    if args.check_cpu:
        meta = vqgan_row(256, guide, clip)
        print(f"meta count, vqgan 256 px: activations {meta.activations / GB:.3f} GB")
        cpu_check(args.cutn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
