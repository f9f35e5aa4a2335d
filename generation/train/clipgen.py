"""Train CLIP-GEN from a folder of images, no captions (Wang et al. 2022, with LAFITE's noise).

    python -m generation.train clipgen --models toyworld.toml --images toy-train \\
        --out toy-clipgen --preset small --steps 3000

Each image gives a CLIP image embedding (the condition) and a grid of VQGAN codes (the target);
the transformer of generation/clipgen_model.py learns p(codes | embedding). At inference a text
embedding takes the image embedding's place, which works because training mixes each embedding
with a random direction: normalise((1 - a) * e + a * u), a ~ U(0, --noise).

What --out holds:
    cache/        embeddings and codes of every image, computed once, in resumable chunks
    checkpoints/  step-NNNNNN/: weights, optimizer and RNG state; --resume continues from the
                  last one and gives the model an uninterrupted run would have given
    samples/      step-NNNNNN.png: held-out images as the VQGAN sees them, samples from their
                  embeddings, and samples from each --prompt's text embedding
    model.safetensors, config.json   the final model (clipgen_model.save_model)

Exit codes: 0 done, 1 failed, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from generation import clipgen_model as cg
from generation.errors import BadRequest, GenerationError
from generation.generators.vqgan import load_model as load_vqgan
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.models import ModelsConfig, ModelStore
from generation.perceptor import resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CACHE_CHUNK = 512  # images per cache file: an interrupted cache build loses at most this many
ENCODE_BATCH = 64
LEARNING_RATES = {"tiny": 1e-3, "small": 1e-3, "base": 3e-4, "medium": 2e-4}
MAX_VAL = 1024
SHEET_COLUMNS = 8
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "n_prefix", "dropout")


@dataclass
class TrainSettings:
    models: str  # models TOML (or "tiny"): the CLIP and VQGAN to train with
    images: Path
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
    batch_size: int = 64
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    noise: float = 0.5  # LAFITE: a ~ U(0, noise) per example
    recon_weight: float = 0.0  # CLIP-GEN's embedding-reconstruction loss (0 = off)
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


# --------------------------------------------------------------------------- the training loop


def train(
    settings: TrainSettings,
    *,
    on_step: Callable[[int], None] | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train as ``settings`` say; returns the final figures. ``on_step(step)`` runs after
    each step's checkpoint (tests use it to interrupt a run)."""
    check_settings(settings)
    # 1. The models TOML and the picture size; then every image file, before anything is
    #    written (bad input fails here with nothing left behind).
    config = ModelsConfig.load(settings.models)
    width, height = picture_size(settings, config)
    files = scan_images(settings.images, width, height)

    # 2. The VQGAN and CLIP to train with, through the project's loaders.
    store = ModelStore(config, settings.device)
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

    # 3. Embeddings and codes of every image, computed once into out/cache.
    embeds, tokens = build_cache(
        settings.out / "cache", settings.images, files, (width, height), vqgan, perceptor,
        fingerprints, resuming=resumed is not None, out=out,
    )  # fmt: skip
    embeds, tokens = embeds.to(device), tokens.to(device)  # [N, E], [N, T]

    # 4. A held-out split, the model and its optimizer (or the last checkpoint's).
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(settings.seed))
    n_val = min(MAX_VAL, max(1, round(len(files) * settings.val_fraction)))
    val_idx, train_idx = order[:n_val].to(device), order[n_val:].to(device)
    model_config = cg.ClipGenConfig(
        vocab_size=fingerprints["vqgan"]["n_embed"],
        grid_h=height // vqgan.factor,
        grid_w=width // vqgan.factor,
        cond_dim=embeds.shape[1],
        **settings.model_shape(),
    )
    torch.manual_seed(settings.seed)
    model = cg.ClipGen(model_config).to(device)
    optimizer = make_optimizer(model, settings)
    batches = torch.Generator().manual_seed(settings.seed + 1)  # batch order and noise
    start_step, history = 0, {}
    if resumed is not None:
        start_step, history = load_checkpoint(resumed, model, optimizer, batches, model_config)
        out(f"resumed from {resumed} at step {start_step}")
    uniform = math.log(model_config.vocab_size)
    out(
        f"clipgen {settings.preset}: {model.num_params():,} parameters, {len(train_idx)} train / "
        f"{n_val} held-out images, {width}x{height} px = {model_config.grid_h}x"
        f"{model_config.grid_w} tokens, {device}; uniform loss ln V = {uniform:.3f}"
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    text_embeds = perceptor.encode_text(settings.prompts)[0] if settings.prompts else None

    # 5. The loop.
    model.train()
    train_seconds, seen, window = 0.0, 0, []
    for step in range(start_step, settings.steps):
        tick = time.perf_counter()
        # 5a. Warm-up, then cosine decay.
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        # 5b. A batch of held-in images; each embedding mixed with a random direction.
        pick = train_idx[torch.randint(len(train_idx), (settings.batch_size,), generator=batches)]
        target = tokens[pick]  # [B, T]
        cond = add_noise(embeds[pick], settings.noise, batches)  # [B, E]
        # 5c. Token cross-entropy (+ the optional embedding reconstruction), one AdamW step.
        with autocast:
            logits = model(cond, target)  # [B, T, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        if settings.recon_weight > 0:
            loss = loss + settings.recon_weight * recon_loss(
                logits.float(), embeds[pick], vqgan, perceptor, model_config
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        window.append(loss.item())
        train_seconds += time.perf_counter() - tick
        seen += settings.batch_size
        done = step + 1
        last = done == settings.steps
        # 5d. Log, evaluate on the held-out images, draw a sample sheet, checkpoint.
        if done % settings.log_every == 0 or last:
            history["train_loss"] = sum(window) / len(window)
            out(
                f"step {done}/{settings.steps}  loss {history['train_loss']:.4f}  "
                f"lr {lr_at(step, settings):.2e}  {seen / max(train_seconds, 1e-9):.0f} images/s"
            )
            window = []
        if done % settings.eval_every == 0 or last:
            history["val_loss"] = evaluate(model, embeds[val_idx], tokens[val_idx], autocast)
            out(f"step {done}  held-out loss {history['val_loss']:.4f}")
        if done % settings.sample_every == 0 or last:
            sheet = settings.out / "samples" / f"step-{done:06d}.png"
            sample_sheet(model, vqgan, embeds[val_idx], tokens[val_idx], text_embeds, sheet, done)
            out(f"step {done}  sample sheet {sheet}")
        if done % settings.checkpoint_every == 0 or last:
            state = {
                "step": done,
                "history": history,
                "settings": settings_json(settings),
                **fingerprints,
            }
            save_checkpoint(ckpt_dir, done, model, optimizer, batches, state, settings)
        if on_step is not None:
            on_step(done)

    # 6. The final model, with what it was trained with.
    images_per_s = seen / train_seconds if train_seconds else 0.0
    figures = {
        "steps": settings.steps,
        "train_loss": history.get("train_loss"),
        "val_loss": history.get("val_loss"),
        "uniform_loss": uniform,
        "images_per_s": images_per_s,
    }
    meta = {
        **fingerprints,
        "image_size": [width, height],
        "preset": settings.preset,
        "noise": settings.noise,
        "images": len(files),
        "models": config.source,
        "figures": figures,
    }
    cg.save_model(model.eval(), meta, settings.out)
    out(
        f"saved {settings.out}: train loss {fmt(figures['train_loss'])}, held-out loss "
        f"{fmt(figures['val_loss'])} (uniform {uniform:.3f}), {images_per_s:.0f} images/s "
        f"this session"
    )
    return figures


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


def add_noise(embeds: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """LAFITE's language-free perturbation: normalise((1 - a) e + a u), u a random unit
    vector and a ~ U(0, level) per example. embeds [B, E] -> [B, E]."""
    batch, dim = embeds.shape
    a = (torch.rand(batch, 1, generator=generator) * level).to(embeds.device)  # [B, 1]
    u = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).to(embeds.device)
    return F.normalize((1 - a) * embeds + a * u, dim=-1)


def recon_loss(
    logits: torch.Tensor,
    embeds: torch.Tensor,
    vqgan: Any,
    perceptor: Any,
    config: cg.ClipGenConfig,
) -> torch.Tensor:
    """CLIP-GEN's embedding reconstruction: the predicted codes (argmax, gradient straight
    through the softmax) decoded and embedded by CLIP should point where the input did."""
    probs = logits.softmax(-1)  # [B, T, V]
    hard = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    codes = hard + probs - probs.detach()  # [B, T, V]
    latents = (codes @ vqgan.codebook).view(-1, config.grid_h, config.grid_w, vqgan.embed_dim)
    images = ((vqgan.decode(latents.permute(0, 3, 1, 2)) + 1) / 2).clamp(0, 1)
    m = cg.conditioning_model(perceptor)
    seen = perceptor.embed(0, resize(images, m.input_size))  # [B, E]
    return (1 - (seen * embeds).sum(-1)).mean()


def make_optimizer(model: cg.ClipGen, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases and norms), as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.learning_rate(), betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model: cg.ClipGen, embeds: torch.Tensor, tokens: torch.Tensor, autocast: Any) -> float:
    """Mean token cross-entropy on held-out images, from their clean embeddings."""
    model.eval()
    total = 0.0
    for start in range(0, len(tokens), 256):
        with autocast:
            logits = model(embeds[start : start + 256], tokens[start : start + 256])
        total += F.cross_entropy(
            logits.float().flatten(0, 1), tokens[start : start + 256].flatten(), reduction="sum"
        ).item()
    model.train()
    return total / tokens.numel()


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
    model.train()
    grid = make_grid(torch.stack(pictures), nrow=SHEET_COLUMNS, padding=2, pad_value=0.5)
    scale = max(1, 96 // (config.grid_h * vqgan.factor))  # small pictures, shown larger
    image = tensor_to_pil(grid)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    cg.atomic_write(path, lambda p: image.save(p, format="PNG"))


# --------------------------------------------------------------------------- inputs


def check_settings(settings: TrainSettings) -> None:
    settings.model_shape()  # an unknown preset fails here
    positive = ("steps", "batch_size", "log_every", "eval_every", "sample_every")
    for name in (*positive, "checkpoint_every", "keep_checkpoints"):
        if getattr(settings, name) < 1:
            raise BadRequest(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= settings.noise <= 1:
        raise BadRequest("--noise must be between 0 and 1")
    if not 0 < settings.val_fraction < 1:
        raise BadRequest("--val-fraction must be between 0 and 1")
    if settings.learning_rate() <= 0 or settings.warmup < 0 or settings.recon_weight < 0:
        raise BadRequest("--lr must be > 0, --warmup and --recon-weight >= 0")


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


def scan_images(folder: Path, width: int, height: int) -> list[str]:
    """The image files of ``folder`` (sorted names), each checked to open and to be at least
    width x height. Raises BadRequest naming what is wrong and what to do."""
    if not folder.is_dir():
        raise BadRequest(f"--images {folder} is not a folder; give a folder of images")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise BadRequest(
            f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)}); give a folder "
            f"of pictures"
        )
    unreadable, small = [], []
    for name in names:
        try:
            with Image.open(folder / name) as image:
                w, h = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            unreadable.append(name)
            continue
        if w < width or h < height:
            small.append(f"{name} is {w}x{h}")
    if unreadable:
        raise BadRequest(
            f"{len(unreadable)} of {len(names)} files in {folder} cannot be read as images "
            f"(e.g. {unreadable[0]}); remove or replace them"
        )
    if small:
        raise BadRequest(
            f"{len(small)} of {len(names)} images in {folder} are smaller than {width}x{height} "
            f"(e.g. {small[0]}); remove them, or train at a smaller --size"
        )
    if len(names) < 2:
        raise BadRequest(f"{folder} holds one image; training needs at least 2 (better thousands)")
    return names


def load_picture(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file centre-cropped to the aspect of ``size`` = (w, h) and resized to it:
    [3, h, w] in [0, 1]."""
    try:
        image = load_image(path)
    except BadRequest as error:
        raise BadRequest(f"{path}: {error}; remove or replace it") from None
    return pil_to_tensor(ImageOps.fit(image, size, Image.Resampling.LANCZOS))[0]


# --------------------------------------------------------------------------- the cache


def build_cache(
    cache: Path,
    folder: Path,
    files: list[str],
    size: tuple[int, int],
    vqgan: Any,
    perceptor: Any,
    fingerprints: dict[str, Any],
    *,
    resuming: bool,
    out: Callable[[str], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings [N, E] (L2-normalised) and VQGAN codes [N, T] of ``files``, computed
    in chunks saved under ``cache``; chunks already there (same images, same models) are
    reused, so an interrupted build continues where it stopped."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    manifest = {"files": files, "size": list(size), **fingerprints}
    manifest_path = cache / "manifest.json"
    if manifest_path.is_file():
        reason = cache_mismatch(json.loads(manifest_path.read_text(encoding="utf-8")), manifest)
        if reason and resuming:
            raise BadRequest(
                f"cannot resume: {reason}; use the models TOML and images it began with"
            )
        if reason:
            out(f"cache {cache} is stale ({reason}); computing it again")
            shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        text = json.dumps(manifest)
        cg.atomic_write(manifest_path, lambda p: p.write_text(text, encoding="utf-8"))

    chunks = [files[i : i + CACHE_CHUNK] for i in range(0, len(files), CACHE_CHUNK)]
    paths = [cache / f"chunk-{i:05d}.safetensors" for i in range(len(chunks))]
    todo = sum(len(c) for c, p in zip(chunks, paths, strict=True) if not p.is_file())
    m = cg.conditioning_model(perceptor)
    with (
        tqdm(total=todo, unit="img", desc="embedding and tokenizing", disable=not todo) as bar,
        ThreadPoolExecutor(4) as pool,
        torch.no_grad(),
    ):
        for names, path in zip(chunks, paths, strict=True):
            if path.is_file():
                continue
            embeds, tokens = [], []
            for start in range(0, len(names), ENCODE_BATCH):
                batch = names[start : start + ENCODE_BATCH]
                pictures = list(pool.map(lambda n: load_picture(folder / n, size), batch))
                images = torch.stack(pictures).to(perceptor.device)  # [b, 3, H, W]
                embeds.append(perceptor.embed(0, resize(images, m.input_size)).cpu())
                tokens.append(cg.encode_tokens(vqgan, images).to(torch.int32).cpu())
                bar.update(len(batch))
            data = {"embeds": torch.cat(embeds), "tokens": torch.cat(tokens)}
            cg.atomic_write(path, lambda p, data=data: save_file(data, str(p)))
    parts = [load_file(str(p)) for p in paths]
    embeds = torch.cat([p["embeds"] for p in parts]).float()  # [N, E]
    tokens = torch.cat([p["tokens"] for p in parts]).long()  # [N, T]
    return embeds, tokens


def cache_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    if old.get("vqgan") and (reason := cg.vqgan_mismatch(old["vqgan"], new["vqgan"])):
        return f"the cache was made with another VQGAN: {reason}"
    if old.get("clip") and (reason := cg.clip_mismatch(old["clip"], new["clip"])):
        return f"the cache was made with another CLIP: {reason}"
    if old.get("size") != new["size"]:
        return f"the cache was made at {old.get('size')}, not {new['size']}"
    if old.get("files") != new["files"]:
        return "the image folder changed since the cache was made"
    return None


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


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (half-written ones are .tmp dirs)."""
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.glob("step-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: p.name) if done else None


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: cg.ClipGen,
    optimizer: torch.optim.Optimizer,
    batches: torch.Generator,
    state: dict[str, Any],
    settings: TrainSettings,
) -> None:
    """checkpoints/step-NNNNNN/: the weights (save_model), the optimizer's tensors and every
    RNG state (safetensors), the rest as JSON. Written in a .tmp dir, then renamed."""
    from safetensors.torch import save_file

    final = ckpt_dir / f"step-{step:06d}"
    temp = ckpt_dir / f".step-{step:06d}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    cg.save_model(model, state, temp)
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
    old = sorted(p for p in ckpt_dir.glob("step-*") if p != final)
    for path in old[: max(0, len(old) - settings.keep_checkpoints + 1)]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: Path,
    model: cg.ClipGen,
    optimizer: torch.optim.Optimizer,
    batches: torch.Generator,
    config: cg.ClipGenConfig,
) -> tuple[int, dict[str, Any]]:
    """Restore weights, optimizer and RNG states; returns (step, history)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    saved, state = cg.load_model(path, "cpu")
    if saved.config != config:
        raise BadRequest(
            f"cannot resume: the run's model is {saved.config.to_dict()}, the options ask for "
            f"{config.to_dict()}; give the run's --preset and model options"
        )
    model.load_state_dict(saved.state_dict())
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
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}


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
        description="Train a CLIP-GEN text-to-image model from a folder of images (no captions).",
    )
    p.add_argument(
        "--models",
        default=os.environ.get("IMAGINE_MODELS"),
        help="models TOML naming the CLIP and VQGAN to train with (default $IMAGINE_MODELS)",
    )
    p.add_argument("--images", required=True, type=Path, help="folder of images, any size")
    p.add_argument("--out", required=True, type=Path, help="model dir (cache, checkpoints, model)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="default %(default)s")
    p.add_argument("--preset", default=defaults.preset, choices=list(cg.PRESETS))
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--n-layer", type=int, help="override the preset")
    p.add_argument("--n-head", type=int, help="override the preset")
    p.add_argument("--n-embd", type=int, help="override the preset")
    p.add_argument("--n-prefix", type=int, help="override the preset")
    p.add_argument("--dropout", type=float, help="override the preset")
    p.add_argument("--lr", type=float, help="peak learning rate (default by preset)")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument(
        "--noise",
        type=float,
        default=defaults.noise,
        help="LAFITE noise: mix each embedding with up to this much of a random direction "
        "(default %(default)s)",
    )
    p.add_argument(
        "--recon-weight",
        type=float,
        default=defaults.recon_weight,
        help="weight of the embedding-reconstruction loss (paper: 0.2; default off)",
    )
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--sample-every", type=int, default=defaults.sample_every)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        default=[],
        help="also sample this text on the sample sheets (repeatable)",
    )
    p.add_argument("--size", help="WxH pictures (default: the models TOML's [defaults] size)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not args.models:
            raise UsageError("--models is required (or set IMAGINE_MODELS)")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = TrainSettings(**vars(args))
    existed = settings.out.exists()
    try:
        train(settings, out=lambda line: print(line, flush=True))
    except BadRequest as error:
        # Bad input found after --out was made (an image that fails to decode): leave nothing.
        if not existed and settings.out.exists():
            shutil.rmtree(settings.out, ignore_errors=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except GenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0
