"""Train CLIP-GEN from pictures alone, no captions (Wang et al. 2022, with LAFITE's noise).

    python -m generation.train clipgen --models toyworld/toyworld.toml --images toy-train \\
        --out toy-clipgen --preset small --steps 3000
    torchrun --nproc-per-node 8 -m generation.train clipgen --models real.toml \\
        --images "imagenet/shard-{000000..001281}.tar" --out clipgen-in --preset medium

Each picture gives a CLIP image embedding (the condition) and a grid of VQGAN codes (the
target); the transformer of generation/clipgen_model.py learns p(codes | embedding). At
inference a text embedding takes the image embedding's place, which works because training mixes
each embedding with a random direction: normalise((1 - a) * e + a * u), a ~ U(0, --noise).
Condition dropout (--cond-dropout) teaches a learned "no condition" prefix too, for
classifier-free guidance at sampling (the generator's ``guidance`` key).

--images: a folder (recursive), a .txt file list or webdataset .tar shards (clipgen_data.py).
Pictures that cannot be used are skipped and counted, never fatal.

Several processes (torchrun, one per GPU, any number of machines): DDP. Every process draws the
same global batch of --batch-size pictures and takes its own slice; --accum splits a slice
into micro-batches, so the same command gives the same model on 1 CPU or 8 GPUs (up to float
rounding). Rank 0 logs, evaluates, samples and checkpoints.

What --out holds:
    cache/NNN/    embeddings and codes of every picture, in parts (clipgen_data.py); kept
    checkpoints/  step-N/: raw and EMA weights, optimizer and RNG state, the run's settings;
                  --resume continues from the highest step and gives the model an uninterrupted
                  run would have given; the run's settings are pinned (see resolve_resume)
    samples/      step-NNNNNN.png: held-out images as the VQGAN sees them, samples from their
                  embeddings, and samples from each --prompt's text embedding (EMA weights)
    log.jsonl     one line per --log-every steps: loss, lr, grad norm, images/s, tokens/s
    model.safetensors, ema.safetensors, config.json   the final model (clipgen_model.save_model)

Nothing under --out is deleted on an error: what was computed stays for the next run.
Exit codes: 0 done, 1 failed, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from generation import clipgen_model as cg
from generation.errors import BadRequest, GenerationError
from generation.generators.vqgan import load_model as load_vqgan
from generation.images import tensor_to_pil
from generation.models import ModelsConfig, ModelStore
from generation.perceptor import resize
from generation.train import clipgen_data as data

LEARNING_RATES = {"tiny": 1e-3, "small": 1e-3, "base": 3e-4, "medium": 2e-4}
MAX_VAL = 1024
SHEET_COLUMNS = 8
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "n_prefix", "dropout")
# Settings a resumed run keeps (resolve_resume): the model's shape and the optimisation.
PINNED = (
    "preset",
    *MODEL_KEYS,
    "lr",
    "min_lr_ratio",
    "warmup",
    "steps",
    "batch_size",
    "weight_decay",
    "grad_clip",
    "noise",
    "cond_dropout",
    "recon_weight",
    "recon_images",
    "ema",
    "seed",
)
LOG_FILE = "log.jsonl"


@dataclass
class TrainSettings:
    models: str  # models TOML (or "tiny"): the CLIP and VQGAN to train with
    images: Path  # a folder, a .txt file list or .tar shards (clipgen_data.find_source)
    out: Path
    steps: int = 3000
    preset: str = "small"
    resume: bool = False
    # Override the preset's model shape (None: the preset's value).
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    n_prefix: int | None = None
    dropout: float | None = None
    lr: float | None = None  # None: by preset (LEARNING_RATES)
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup: int = 100
    batch_size: int = 64  # the global batch: over all processes and micro-batches
    accum: int = 1  # micro-batches per step in each process (gradient accumulation)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    noise: float = 0.5  # LAFITE: a ~ U(0, noise) per example
    cond_dropout: float = 0.1  # share of examples trained unconditioned (guidance)
    recon_weight: float = 0.0  # CLIP-GEN's embedding-reconstruction loss (0 = off)
    recon_images: int = 4  # pictures per micro-batch it decodes and embeds
    ema: float = 0.999  # EMA decay of the weights (0 = no EMA)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere), bf16 or fp32
    grad_checkpointing: bool = False  # recompute activations in backward: less memory
    workers: int = 4  # DataLoader processes decoding pictures for the cache
    prefetch: int = 2  # batches of pictures each decoding worker keeps ready
    val_fraction: float = 0.05
    log_every: int = 50
    eval_every: int = 250
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    prompts: list[str] = field(default_factory=list)  # text rows of the sample sheet
    size: str | None = None  # "WxH"; None: the models TOML's [defaults] size
    device: str | None = None
    seed: int = 0
    tensorboard: bool = False  # also log to out/tensorboard (needs the tensorboard package)
    allow_change: list[str] = field(default_factory=list)  # pinned settings a resume may change
    # The settings given on the command line (None: all of them); a resumed run takes the
    # others from its checkpoint.
    explicit: frozenset[str] | None = None

    def model_shape(self) -> dict[str, Any]:
        if self.preset not in cg.PRESETS:
            raise BadRequest(
                f"unknown preset {self.preset!r}; choose one of {', '.join(cg.PRESETS)}"
            )
        shape = dict(cg.PRESETS[self.preset])
        shape.update({k: getattr(self, k) for k in MODEL_KEYS if getattr(self, k) is not None})
        return shape

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else LEARNING_RATES.get(self.preset, 3e-4)

    def pinned(self) -> dict[str, Any]:
        """The values resolve_resume compares (lr as used: the preset's when not given)."""
        values = {name: getattr(self, name) for name in PINNED}
        values["lr"] = self.learning_rate()
        return values


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor)
        return float(tensor) / self.size


def join_world(device: str | None) -> tuple[World, bool]:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), joined; (World, whether this call joined it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    nccl = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if nccl:
        torch.cuda.set_device(local)
    joined = not torch.distributed.is_initialized()
    if joined:
        # Long: rank 0 may build a large cache part while the others wait at a barrier.
        torch.distributed.init_process_group(
            "nccl" if nccl else "gloo", timeout=timedelta(minutes=60)
        )
    return World(rank, size, local), joined


def pick_device(settings: TrainSettings, world: World) -> str | None:
    if settings.device is None and world.size > 1 and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    if settings.device == "cuda" and world.size > 1:
        return f"cuda:{world.local_rank}"
    return settings.device


def autocast_for(settings: TrainSettings, device: torch.device) -> Any:
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- the training loop


def train(
    settings: TrainSettings,
    *,
    on_step: Callable[[int], None] | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train as ``settings`` say; returns the final figures. ``on_step(step)`` runs after
    each step's checkpoint (tests use it to interrupt a run). Under torchrun (WORLD_SIZE > 1)
    this process is one of several; only rank 0 writes and prints."""
    check_settings(settings)
    world, joined = join_world(settings.device)
    try:
        return run(settings, world, on_step, out if world.main else (lambda _: None))
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def run(
    settings: TrainSettings,
    world: World,
    on_step: Callable[[int], None] | None,
    out: Callable[[str], None],
) -> dict[str, Any]:
    # 1. The models TOML, the picture size and the pictures, before anything is written (bad
    #    input fails here with nothing left behind).
    config = ModelsConfig.load(settings.models)
    width, height = picture_size(settings, config)
    source = data.find_source(settings.images)
    if settings.batch_size % (world.size * settings.accum):
        raise BadRequest(
            f"--batch-size {settings.batch_size} does not split into {world.size} process(es) x "
            f"--accum {settings.accum} equal micro-batches; give a multiple of "
            f"{world.size * settings.accum}"
        )

    # 2. The VQGAN and CLIP to train with, through the project's loaders; the run to resume.
    store = ModelStore(config, pick_device(settings, world))
    device = store.device
    vqgan = load_vqgan(store)
    perceptor = store.perceptor()
    if width % vqgan.factor or height % vqgan.factor:
        raise BadRequest(
            f"--size {width}x{height} is not a multiple of the VQGAN's factor {vqgan.factor}"
        )
    fingerprints = {"vqgan": cg.vqgan_fingerprint(vqgan), "clip": cg.clip_fingerprint(perceptor)}
    ckpt_dir = settings.out / "checkpoints"
    resumed = check_out_dir(settings, fingerprints)
    if resumed is not None:
        settings = resolve_resume(settings, resumed, out)

    # 3. Embeddings and codes of every picture, computed once into out/cache (each process
    #    encodes its share of the missing parts), then the held-out split.
    rows, usable = prepare_cache(settings, source, (width, height), vqgan, perceptor,
                                 fingerprints, world, out)  # fmt: skip
    val_rows, train_rows = data.split_rows(rows, usable, settings.val_fraction, MAX_VAL)
    val_embeds, val_tokens = (t.to(device) for t in rows.batch(val_rows))  # [n, E], [n, T]

    # 4. The model, its EMA and optimizer (or the last checkpoint's).
    model_config = cg.ClipGenConfig(
        vocab_size=fingerprints["vqgan"]["n_embed"],
        grid_h=height // vqgan.factor,
        grid_w=width // vqgan.factor,
        cond_dim=val_embeds.shape[1],
        null_cond=settings.cond_dropout > 0,
        **settings.model_shape(),
    )
    torch.manual_seed(settings.seed)
    model = cg.ClipGen(model_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval() if settings.ema > 0 else None
    optimizer = make_optimizer(model, settings)
    batches = torch.Generator().manual_seed(settings.seed + 1)  # batch order, noise, dropout
    start_step, history = 0, {}
    if resumed is not None:
        start_step, history = load_checkpoint(resumed, model, ema, optimizer, batches, model_config)
        out(f"resumed from {resumed} at step {start_step}")
    if world.rank > 0:
        torch.manual_seed(settings.seed + 1000 * world.rank + start_step)  # its own dropout
    if settings.grad_checkpointing:
        checkpoint_activations(model)
    trained = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    uniform = math.log(model_config.vocab_size)
    per_process = settings.batch_size // world.size
    micro = per_process // settings.accum
    out(
        f"clipgen {settings.preset}: {model.num_params():,} parameters, {len(train_rows)} train / "
        f"{len(val_rows)} held-out pictures, {width}x{height} px = {model_config.grid_h}x"
        f"{model_config.grid_w} tokens, {world.size} process(es) on {device}, batch "
        f"{settings.batch_size} = {world.size} x {settings.accum} x {micro}; uniform loss ln V = "
        f"{uniform:.3f}"
    )
    autocast = autocast_for(settings, device)
    text_embeds = perceptor.encode_text(settings.prompts)[0] if settings.prompts else None
    log = Logger(settings, world)

    # 5. The loop.
    model.train()
    train_seconds, seen, window, norms = 0.0, 0, [], []
    mine = slice(world.rank * per_process, (world.rank + 1) * per_process)
    for step in range(start_step, settings.steps):
        tick = time.perf_counter()
        # 5a. Warm-up, then cosine decay.
        lr = lr_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # 5b. The global batch (the same draw in every process), this process's slice of it;
        #     each embedding mixed with a random direction, some conditions dropped.
        pick = torch.randint(len(train_rows), (settings.batch_size,), generator=batches)
        a, u = noise_draws(settings.batch_size, val_embeds.shape[1], settings.noise, batches)
        drop = torch.rand(settings.batch_size, generator=batches) < settings.cond_dropout  # [B]
        embeds, target = (t.to(device) for t in rows.batch(train_rows[pick.numpy()[mine]]))
        cond = mix_noise(embeds, a[mine].to(device), u[mine].to(device))  # [b, E]
        drop = drop[mine].to(device) if model_config.null_cond else None
        # 5c. Token cross-entropy (+ the embedding reconstruction on a few pictures), summed
        #     over the micro-batches; DDP averages the gradients over the processes.
        recon = None
        if settings.recon_weight > 0:

            def recon(logits: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
                return recon_loss(logits, embeds, vqgan, perceptor, model_config)

        total = accumulate_gradients(
            trained, settings, world, cond, target, drop, embeds, autocast, recon
        )
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            update_ema(ema, model, settings.ema, step)
        window.append(total)
        norms.append(float(norm))
        train_seconds += time.perf_counter() - tick
        seen += settings.batch_size
        done = step + 1
        last = done == settings.steps
        # 5d. Log, evaluate on the held-out pictures, draw a sample sheet, checkpoint.
        if done % settings.log_every == 0 or last:
            history["train_loss"] = world.mean(sum(window) / len(window))
            rate = seen / max(train_seconds, 1e-9)
            log.write(
                done,
                loss=history["train_loss"],
                lr=lr,
                grad_norm=sum(norms) / len(norms),
                images_per_s=rate,
                tokens_per_s=rate * model_config.n_tokens,
            )
            out(
                f"step {done}/{settings.steps}  loss {history['train_loss']:.4f}  lr {lr:.2e}  "
                f"grad norm {sum(norms) / len(norms):.3f}  {rate:.0f} images/s  "
                f"{rate * model_config.n_tokens:.0f} tokens/s"
            )
            window, norms = [], []
        if world.main and (done % settings.eval_every == 0 or last):
            history["val_loss"] = evaluate(model, val_embeds, val_tokens, autocast)
            line = f"step {done}  held-out loss {history['val_loss']:.4f}"
            if ema is not None:
                history["val_loss_ema"] = evaluate(ema, val_embeds, val_tokens, autocast)
                line += f" (EMA {history['val_loss_ema']:.4f})"
            log.write(done, **{k: v for k, v in history.items() if k.startswith("val_")})
            out(line)
        if world.main and (done % settings.sample_every == 0 or last):
            sheet = settings.out / "samples" / f"step-{done:06d}.png"
            sample_sheet(ema or model, vqgan, val_embeds, val_tokens, text_embeds, sheet, done)
            log.image(done, sheet)
            out(f"step {done}  sample sheet {sheet}")
        if world.main and (done % settings.checkpoint_every == 0 or last):
            state = {
                "step": done,
                "history": history,
                "settings": settings_json(settings),
                "pinned": settings.pinned(),
                **fingerprints,
            }
            save_checkpoint(ckpt_dir, done, model, ema, optimizer, batches, state, settings)
        if on_step is not None:
            on_step(done)

    # 6. The final model (raw and EMA weights), with what it was trained with.
    log.close()
    images_per_s = seen / train_seconds if train_seconds else 0.0
    figures = {
        "steps": settings.steps,
        "train_loss": history.get("train_loss"),
        "val_loss": history.get("val_loss"),
        "val_loss_ema": history.get("val_loss_ema"),
        "uniform_loss": uniform,
        "images_per_s": images_per_s,
        "tokens_per_s": images_per_s * model_config.n_tokens,
    }
    if world.main:
        meta = {
            **fingerprints,
            "image_size": [width, height],
            "preset": settings.preset,
            "noise": settings.noise,
            "cond_dropout": settings.cond_dropout,
            "ema_decay": settings.ema,
            "images": len(usable),
            "models": config.source,
            "figures": figures,
        }
        cg.save_model(model.eval(), meta, settings.out, ema=ema)
        out(
            f"saved {settings.out}: train loss {fmt(figures['train_loss'])}, held-out loss "
            f"{fmt(figures['val_loss'])} (EMA {fmt(figures['val_loss_ema'])}; uniform "
            f"{uniform:.3f}), {images_per_s:.0f} images/s this session"
        )
    world.barrier()
    return figures


def accumulate_gradients(
    trained: torch.nn.Module,
    settings: TrainSettings,
    world: World,
    cond: torch.Tensor,
    target: torch.Tensor,
    drop: torch.Tensor | None,
    embeds: torch.Tensor,
    autocast: Any,
    recon: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> float:
    """Forward and backward over this process's slice in --accum micro-batches: cond [b, E],
    target [b, T], drop [b] (None: no condition dropout), embeds [b, E] (the clean ones, for the
    reconstruction). Gradients add up in .grad (DDP syncs on the last micro-batch only);
    returns the slice's mean loss."""
    micro = len(target) // settings.accum
    total = 0.0
    for k in range(settings.accum):
        part = slice(k * micro, (k + 1) * micro)
        sync = contextlib.nullcontext()
        if world.size > 1 and k < settings.accum - 1:
            sync = trained.no_sync()
        with sync:
            with autocast:
                logits = trained(cond[part], target[part], None if drop is None else drop[part])
            loss = F.cross_entropy(logits.float().flatten(0, 1), target[part].flatten())
            if recon is not None:
                # Only a few pictures: each is decoded by the VQGAN and embedded by CLIP.
                few = slice(0, min(settings.recon_images, micro))
                loss = loss + settings.recon_weight * recon(logits[few].float(), embeds[part][few])
            (loss / settings.accum).backward()
        total += loss.item() / settings.accum
    return total


def checkpoint_activations(model: cg.ClipGen) -> None:
    """Recompute each GPT-2 block's activations in the backward pass instead of keeping them
    (non-reentrant, which DDP needs); transformers 5 renamed the call."""
    gpt = model.gpt
    kwargs = {"use_reentrant": False}
    if hasattr(gpt, "activation_checkpointing_enable"):
        gpt.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        gpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to the learning rate, then cosine decay to min_lr_ratio of it."""
    top = settings.learning_rate()
    if step < settings.warmup:
        return top * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    low = top * settings.min_lr_ratio
    return low + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (top - low)


def noise_draws(
    batch: int, dim: int, level: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """LAFITE's amounts a ~ U(0, level) [B, 1] and random unit directions u [B, E]."""
    a = torch.rand(batch, 1, generator=generator) * level  # [B, 1]
    u = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)  # [B, E]
    return a, u


def mix_noise(embeds: torch.Tensor, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """normalise((1 - a) e + a u): embeds [B, E], a [B, 1], u [B, E] -> [B, E]."""
    return F.normalize((1 - a) * embeds + a * u, dim=-1)


def add_noise(embeds: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """LAFITE's language-free perturbation of embeds [B, E] -> [B, E] (noise_draws, mix_noise)."""
    a, u = noise_draws(embeds.shape[0], embeds.shape[1], level, generator)
    return mix_noise(embeds, a.to(embeds.device), u.to(embeds.device))


def recon_loss(
    logits: torch.Tensor,
    embeds: torch.Tensor,
    vqgan: Any,
    perceptor: Any,
    config: cg.ClipGenConfig,
) -> torch.Tensor:
    """CLIP-GEN's embedding reconstruction: the predicted codes (argmax, gradient straight
    through the softmax) decoded and embedded by CLIP should point where the input did.
    logits [b, T, V], embeds [b, E]; training passes only --recon-images pictures, because the
    VQGAN decoder and CLIP run (with gradients) on each."""
    probs = logits.softmax(-1)  # [B, T, V]
    hard = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    codes = hard + probs - probs.detach()  # [B, T, V]
    latents = (codes @ vqgan.codebook).view(-1, config.grid_h, config.grid_w, vqgan.embed_dim)
    images = ((vqgan.decode(latents.permute(0, 3, 1, 2)) + 1) / 2).clamp(0, 1)
    m = cg.conditioning_model(perceptor)
    seen = perceptor.embed(0, resize(images, m.input_size))  # [B, E]
    return (1 - (seen * embeds).sum(-1)).mean()


@torch.no_grad()
def update_ema(ema: cg.ClipGen, model: cg.ClipGen, decay: float, step: int) -> None:
    """ema = d * ema + (1 - d) * model, d = min(decay, (1 + step) / (10 + step)): early on the
    average follows the weights closely, so a short run's EMA is not its random start."""
    d = min(decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - d)


def make_optimizer(model: cg.ClipGen, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms and the null prefix)."""
    params = [p for p in model.parameters() if p.requires_grad]
    null = getattr(model, "null_prefix", None)
    matrices = [p for p in params if p.dim() >= 2 and p is not null]
    others = [p for p in params if p.dim() < 2 or p is null]
    groups = [
        {"params": matrices, "weight_decay": settings.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.learning_rate(), betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model: cg.ClipGen, embeds: torch.Tensor, tokens: torch.Tensor, autocast: Any) -> float:
    """Mean token cross-entropy on held-out pictures, from their clean embeddings."""
    was = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(tokens), 256):
        with autocast:
            logits = model(embeds[start : start + 256], tokens[start : start + 256])
        total += F.cross_entropy(
            logits.float().flatten(0, 1), tokens[start : start + 256].flatten(), reduction="sum"
        ).item()
    model.train(was)
    return total / tokens.numel()


class Logger:
    """Rank 0's log: out/log.jsonl (one JSON object a line), and TensorBoard when asked."""

    def __init__(self, settings: TrainSettings, world: World) -> None:
        self.path = settings.out / LOG_FILE if world.main else None
        self.board = None
        if world.main and settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(settings.out / "tensorboard"))

    def write(self, step: int, **values: float) -> None:
        if self.path is None:
            return
        line = json.dumps({"step": step, "time": round(time.time(), 3), **values})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.board is not None:
            for key, value in values.items():
                self.board.add_scalar(key, value, step)

    def image(self, step: int, path: Path) -> None:
        if self.board is not None:
            with Image.open(path) as sheet:
                pixels = np.asarray(sheet.convert("RGB"))
            self.board.add_image("samples", pixels, step, dataformats="HWC")

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


# --------------------------------------------------------------------------- the cache


def prepare_cache(
    settings: TrainSettings,
    source: data.Source,
    size: tuple[int, int],
    vqgan: Any,
    perceptor: Any,
    fingerprints: dict[str, Any],
    world: World,
    out: Callable[[str], None],
) -> tuple[data.CachedRows, np.ndarray]:
    """The cache's rows and the row numbers of ``source``'s usable pictures. Missing parts are
    computed first, each process its share; skipped pictures are counted and reported."""
    from tqdm import tqdm

    manifest = {"size": list(size), **fingerprints}
    root = settings.out / "cache"
    if world.main:
        data.cache_folder(root, manifest)
    world.barrier()
    folder = data.cache_folder(root, manifest, create=False)
    units = data.pending_units(source, data.read_parts(folder))
    mine = units[world.rank :: world.size]
    todo = sum(len(u.items) for u in mine)
    m = cg.conditioning_model(perceptor)

    def encode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(perceptor.device)  # [b, 3, H, W]
        embeds = perceptor.embed(0, resize(images, m.input_size))  # [b, E]
        return embeds, cg.encode_tokens(vqgan, images)  # [b, E], [b, T]

    if units:
        out(f"cache {folder}: {len(units)} part(s) to compute ({source.describe()})")
    with tqdm(
        total=todo or None,
        unit="img",
        desc="embedding and tokenizing",
        disable=not (mine and world.main),
    ) as bar:
        data.build_parts(
            folder, mine, size, encode, fingerprints["vqgan"]["n_embed"],
            workers=settings.workers, prefetch=settings.prefetch, progress=bar.update,
        )  # fmt: skip
    world.barrier()
    parts = data.read_parts(folder)
    rows = data.CachedRows(folder, parts)
    usable = data.usable_rows(rows, source)
    skipped = data.skipped_of(parts, source)
    line = f"{len(usable)} usable picture(s) from {source.describe()}"
    if skipped:
        reasons = Counter(reason.split(" (")[0] for reason in skipped.values())
        key, why = next(iter(skipped.items()))
        counts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        line += f"; {len(skipped)} skipped ({counts}; e.g. {key.rsplit(':', 2)[0]}: {why})"
    out(line)
    if len(usable) < 2:
        raise BadRequest(
            f"{line}; training needs at least 2 usable pictures (better thousands): add "
            f"pictures at least {size[0]}x{size[1]}, or train at a smaller --size"
        )
    return rows, usable


@torch.no_grad()
def sample_sheet(
    model: cg.ClipGen,
    vqgan: Any,
    embeds: torch.Tensor,
    tokens: torch.Tensor,
    text_embeds: torch.Tensor | None,
    path: Path,
    step: int,
) -> None:
    """Row 1: held-out images as the VQGAN decodes them; row 2: samples from their image
    embeddings; then one row per prompt (samples from its text embedding)."""
    from torchvision.utils import make_grid

    config = model.config
    was = model.training
    model.eval()
    k = min(SHEET_COLUMNS, len(tokens))
    conds = [embeds[:k]]
    if text_embeds is not None:
        conds += [e.expand(SHEET_COLUMNS, -1) for e in text_embeds.to(embeds.device)]
    generator = torch.Generator(embeds.device).manual_seed(step)
    rows = [tokens[:k]] + [
        cg.sample_tokens(model, c, temperature=1.0, top_k=0, top_p=1.0, generator=generator)
        for c in conds
    ]
    pictures = []
    for row in rows:
        images = cg.decode_tokens(vqgan, row, config.grid_h, config.grid_w).float().cpu()
        pictures += list(images) + [torch.ones_like(images[0])] * (SHEET_COLUMNS - len(images))
    model.train(was)
    grid = make_grid(torch.stack(pictures), nrow=SHEET_COLUMNS, padding=2, pad_value=0.5)
    scale = max(1, 96 // (config.grid_h * vqgan.factor))  # small pictures, shown larger
    image = tensor_to_pil(grid)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    cg.atomic_write(path, lambda p: image.save(p, format="PNG"))


# --------------------------------------------------------------------------- inputs


def check_settings(settings: TrainSettings) -> None:
    settings.model_shape()  # an unknown preset fails here
    positive = ("steps", "batch_size", "accum", "log_every", "eval_every", "sample_every")
    for name in (*positive, "checkpoint_every", "keep_checkpoints", "prefetch"):
        if getattr(settings, name) < 1:
            raise BadRequest(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= settings.noise <= 1:
        raise BadRequest("--noise must be between 0 and 1")
    if not 0 <= settings.cond_dropout < 1:
        raise BadRequest("--cond-dropout must be at least 0 and below 1")
    if not 0 <= settings.ema < 1:
        raise BadRequest("--ema must be at least 0 (off) and below 1, e.g. 0.999")
    if not 0 < settings.val_fraction < 1:
        raise BadRequest("--val-fraction must be between 0 and 1")
    if settings.learning_rate() <= 0 or settings.warmup < 0 or settings.recon_weight < 0:
        raise BadRequest("--lr must be > 0, --warmup and --recon-weight >= 0")
    if settings.recon_images < 1 or settings.workers < 0:
        raise BadRequest("--recon-images must be at least 1, --workers at least 0")
    if settings.precision not in ("auto", "bf16", "fp32"):
        raise BadRequest("--precision must be auto, bf16 or fp32")
    unknown = set(settings.allow_change) - {*PINNED, "all"}
    if unknown:
        raise BadRequest(
            f"--allow-change {sorted(unknown)[0]}: not a pinned setting; choose from "
            f"{', '.join(PINNED)} or all"
        )
    if settings.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise BadRequest(
                "--tensorboard needs the tensorboard package: pip install tensorboard "
                "(out/log.jsonl has the same figures without it)"
            ) from None


def picture_size(settings: TrainSettings, config: ModelsConfig) -> tuple[int, int]:
    """(width, height) from --size, else the models TOML's [defaults] size."""
    text = settings.size or config.defaults.get("size")
    if text is None:
        raise BadRequest(
            f"no picture size: give --size WxH (the VQGAN's training size), or set size in "
            f"[defaults] of {config.source}"
        )
    parts = str(text).lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        width = height = 0
    if width < 1 or height < 1:
        raise BadRequest(f"size {text!r} is not WxH or N, e.g. 256x256 or 256")
    return width, height


# --------------------------------------------------------------------------- checkpoints


def check_out_dir(settings: TrainSettings, fingerprints: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from (None: start afresh). Refuses to overwrite a run
    without --resume, and to resume with other models than the run began with."""
    last = latest_checkpoint(settings.out / "checkpoints")
    if not settings.resume:
        if last is not None or (settings.out / cg.CONFIG_FILE).is_file():
            raise BadRequest(
                f"--out {settings.out} already holds a training run; pass --resume to "
                f"continue it, or choose another --out"
            )
        return None
    if last is None:
        return None
    state = json.loads((last / "state.json").read_text(encoding="utf-8"))
    reason = cg.vqgan_mismatch(state["vqgan"], fingerprints["vqgan"]) or cg.clip_mismatch(
        state["clip"], fingerprints["clip"]
    )
    if reason:
        raise BadRequest(
            f"cannot resume {settings.out}: {reason.replace('it was', 'the run was')}; use the "
            f"models TOML the run began with"
        )
    return last


def resolve_resume(
    settings: TrainSettings, checkpoint: Path, out: Callable[[str], None]
) -> TrainSettings:
    """The settings a resumed run goes on with. Pinned settings (PINNED) not given on the
    command line are the run's; a given one that differs is refused with the way out, unless
    --allow-change names it (or all)."""
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    run_values = state.get("pinned", {})
    now = settings.pinned()
    adopted: dict[str, Any] = {}
    for name, old in run_values.items():
        new = now.get(name)
        if name not in now or new == old:
            continue
        option = f"--{name.replace('_', '-')}"
        if settings.explicit is not None and name not in settings.explicit:
            adopted[name] = old
        elif name in settings.allow_change or "all" in settings.allow_change:
            out(f"{option} changed from {old} to {new} on resume (--allow-change)")
        else:
            raise BadRequest(
                f"cannot resume {settings.out}: {option} {new} differs from the run's {old}; "
                f"give {option} {old}, or pass --allow-change {name} to change it"
            )
    if adopted:
        out("resuming with the run's " + ", ".join(f"{k} {v}" for k, v in adopted.items()))
    return dataclasses.replace(settings, **adopted)


def checkpoint_step(path: Path) -> int:
    """step-N -> N (-1 for a name that is not one)."""
    _, _, number = path.name.partition("-")
    return int(number) if number.isdigit() else -1


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step number (half-written ones are .tmp
    dirs); by number, so step-1000000 comes after step-999999."""
    if not ckpt_dir.is_dir():
        return None
    done = [
        p
        for p in ckpt_dir.glob("step-*")
        if checkpoint_step(p) >= 0 and (p / "state.json").is_file()
    ]
    return max(done, key=checkpoint_step) if done else None


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: cg.ClipGen,
    ema: cg.ClipGen | None,
    optimizer: torch.optim.Optimizer,
    batches: torch.Generator,
    state: dict[str, Any],
    settings: TrainSettings,
) -> None:
    """checkpoints/step-N/: the raw and EMA weights (save_model), the optimizer's tensors and
    every RNG state (safetensors), the rest as JSON. Written in a .tmp dir, then renamed; the
    oldest beyond --keep-checkpoints (by step number) are removed."""
    from safetensors.torch import save_file

    final = ckpt_dir / f"step-{step:06d}"
    temp = ckpt_dir / f".step-{step:06d}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    cg.save_model(model, state, temp, ema=ema)
    optim = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{key}": value.detach().cpu().contiguous()
        for index, values in optim["state"].items()
        for key, value in values.items()
    }
    tensors["rng.batches"] = batches.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(temp / "train.safetensors"))
    text = json.dumps({**state, "param_groups": optim["param_groups"]}, indent=1)
    (temp / "state.json").write_text(text, encoding="utf-8")
    for name in ("train.safetensors", "state.json"):
        with open(temp / name, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    temp.rename(final)
    old = sorted(
        (p for p in ckpt_dir.glob("step-*") if p != final and checkpoint_step(p) >= 0),
        key=checkpoint_step,
    )
    for path in old[: max(0, len(old) - settings.keep_checkpoints + 1)]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: Path,
    model: cg.ClipGen,
    ema: cg.ClipGen | None,
    optimizer: torch.optim.Optimizer,
    batches: torch.Generator,
    config: cg.ClipGenConfig,
) -> tuple[int, dict[str, Any]]:
    """Restore weights (raw and EMA), optimizer and RNG states; returns (step, history)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    saved, state = cg.load_model(path, "cpu", ema=False)
    if saved.config != config:
        raise BadRequest(
            f"cannot resume: the run's model is {saved.config.to_dict()}, the options ask for "
            f"{config.to_dict()}; give the run's --preset and model options"
        )
    model.load_state_dict(saved.state_dict())
    if ema is not None:
        # A checkpoint without EMA weights (EMA switched on at resume) starts it from the raw.
        averaged, _ = cg.load_model(path, "cpu", ema=True)
        ema.load_state_dict(averaged.state_dict())
    try:
        tensors = load_file(str(path / "train.safetensors"))
        param_groups = json.loads((path / "state.json").read_text(encoding="utf-8"))["param_groups"]
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise GenerationError(
            f"checkpoint {path} is damaged ({type(error).__name__}); delete it to resume from "
            f"the one before"
        ) from None
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": optim_state, "param_groups": param_groups})
    batches.set_state(tensors["rng.batches"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(state["step"]), dict(state.get("history", {}))


def settings_json(settings: TrainSettings) -> dict[str, Any]:
    values = asdict(settings)
    values["explicit"] = sorted(settings.explicit) if settings.explicit is not None else None
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


# --------------------------------------------------------------------------- command line


class UsageError(Exception):
    """A bad command line: exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainSettings(models="", images=Path(), out=Path())
    p = _Parser(
        prog="python -m generation.train clipgen",
        description="Train a CLIP-GEN text-to-image model from pictures alone (no captions).",
    )

    def setting(flag: str, kind: type, text: str | None = None) -> None:
        """``flag`` sets the TrainSettings field of its name (--batch-size: batch_size) and
        defaults to that field's default."""
        field = flag.removeprefix("--").replace("-", "_")
        p.add_argument(flag, type=kind, default=getattr(defaults, field), help=text)

    p.add_argument(
        "--models",
        default=os.environ.get("IMAGINE_MODELS"),
        help="models TOML naming the CLIP and VQGAN to train with (default $IMAGINE_MODELS)",
    )
    p.add_argument(
        "--images",
        required=True,
        type=Path,
        help="a folder of images (recursive), a .txt list of image paths, or webdataset tar "
        'shards ("shard-{000000..000099}.tar")',
    )
    p.add_argument("--out", required=True, type=Path, help="model dir (cache, checkpoints, model)")
    setting("--steps", int, "default %(default)s")
    p.add_argument("--preset", default=defaults.preset, choices=list(cg.PRESETS))
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="SETTING",
        help="on --resume, accept a new value of this pinned setting (repeatable; 'all')",
    )
    p.add_argument("--n-layer", type=int, help="override the preset")
    p.add_argument("--n-head", type=int, help="override the preset")
    p.add_argument("--n-embd", type=int, help="override the preset")
    p.add_argument("--n-prefix", type=int, help="override the preset")
    p.add_argument("--dropout", type=float, help="override the preset")
    p.add_argument("--lr", type=float, help="peak learning rate (default by preset)")
    setting("--min-lr-ratio", float)
    setting("--warmup", int, "default %(default)s")
    setting(
        "--batch-size",
        int,
        "global batch over all processes and micro-batches (default %(default)s)",
    )
    setting(
        "--accum", int, "micro-batches per step in each process (gradient accumulation; default 1)"
    )
    setting("--weight-decay", float)
    setting("--grad-clip", float)
    setting(
        "--noise",
        float,
        "LAFITE noise: mix each embedding with up to this much of a random direction "
        "(default %(default)s)",
    )
    setting(
        "--cond-dropout",
        float,
        "share of examples trained without their condition, for classifier-free "
        "guidance at sampling (default %(default)s; 0: none)",
    )
    setting(
        "--recon-weight",
        float,
        "weight of the embedding-reconstruction loss (paper: 0.2; default off)",
    )
    setting(
        "--recon-images",
        int,
        "pictures per micro-batch the reconstruction loss decodes (default %(default)s)",
    )
    setting(
        "--ema",
        float,
        "EMA decay of the weights, saved beside them and used for sampling "
        "(default %(default)s; 0: none)",
    )
    p.add_argument(
        "--precision",
        default=defaults.precision,
        choices=("auto", "bf16", "fp32"),
        help="auto: bf16 autocast on CUDA, fp32 elsewhere",
    )
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, about 30%% slower)",
    )
    setting(
        "--workers",
        int,
        "DataLoader processes decoding pictures for the cache (default %(default)s)",
    )
    setting("--prefetch", int)
    setting("--val-fraction", float)
    setting("--log-every", int)
    setting("--eval-every", int)
    setting("--sample-every", int)
    setting("--checkpoint-every", int)
    setting("--keep-checkpoints", int)
    p.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        default=[],
        help="also sample this text on the sample sheets (repeatable)",
    )
    p.add_argument("--size", help="WxH pictures (default: the models TOML's [defaults] size)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    setting("--seed", int)
    p.add_argument(
        "--tensorboard", action="store_true", help="also log to out/tensorboard (if installed)"
    )
    return p


def given_options(argv: Sequence[str]) -> frozenset[str]:
    """The settings ``argv`` names (a resumed run takes the others from its checkpoint)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return frozenset(vars(parser.parse_args(list(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if not args.models:
            raise UsageError("--models is required (or set IMAGINE_MODELS)")
        explicit = given_options(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = TrainSettings(**vars(args), explicit=explicit)
    try:
        # Nothing under --out is removed on an error: the cache and checkpoints are kept.
        train(settings, out=lambda line: print(line, flush=True))
    except BadRequest as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except GenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0
