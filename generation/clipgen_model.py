"""CLIP-GEN's transformer: p(VQGAN tokens | CLIP embedding), one file, nanoGPT style.

The CLIP embedding (L2-normalised) goes through one Linear to ``n_prefix`` prefix embeddings;
the VQGAN's codes of one picture follow them, row-major. The stack is transformers' GPT-2 fed
with ``inputs_embeds`` (its attention, its KV cache); only the prefix projection is ours.

A model directory holds ``model.safetensors`` and ``config.json`` (the ClipGenConfig plus
"meta": the VQGAN and CLIP it was trained with, the picture size, training figures). Both are
written under temporary names and renamed, so a crash never leaves a half-written file; a
``save_id`` stored in both says when the two come from different saves.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generation.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"  # the EMA of the weights, beside the raw ones; sampling prefers it
CONFIG_FILE = "config.json"
FORMAT = "clipgen/1"
TRAIN_HINT = (
    "train one with: python -m generation.train clipgen --models TOML --images DIR --out DIR"
)

# Model sizes. small: about 0.5M parameters, minutes on 2 CPU cores in the toy world.
# base: GPT-2 small's shape; medium: GPT-2 medium's, CLIP-GEN's COCO model.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_prefix": 1, "dropout": 0.0},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 96, "n_prefix": 1, "dropout": 0.0},
    "base": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_prefix": 1, "dropout": 0.1},
    "medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "n_prefix": 1, "dropout": 0.1},
}


@dataclass
class ClipGenConfig:
    vocab_size: int  # VQGAN codes
    grid_h: int  # token rows (picture height / VQGAN factor)
    grid_w: int  # tokens per row
    cond_dim: int  # CLIP embedding size
    n_prefix: int = 1  # prefix embeddings made from the CLIP embedding
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0
    # A learned "no condition" prefix (trained by condition dropout): classifier-free guidance.
    null_cond: bool = False
    # HFAiLab/clip-gen's published models (generation.clipgen_hfai): the exact GELU, and an
    # output head of its own with a bias instead of GPT-2's, which shares the token embedding.
    activation: str = "gelu_new"  # transformers' name; GPT-2's tanh approximation
    tied_head: bool = True

    @property
    def n_tokens(self) -> int:
        return self.grid_h * self.grid_w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipGenConfig:
        names = {f.name for f in fields(cls)}
        missing = {f.name for f in fields(cls) if f.name not in data} - {
            "n_prefix",
            "n_layer",
            "n_head",
            "n_embd",
            "dropout",
            "null_cond",
            "activation",
            "tied_head",
        }
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in names})


class ClipGen(nn.Module):
    """GPT-2 over VQGAN tokens, conditioned by a CLIP-embedding prefix."""

    def __init__(self, config: ClipGenConfig) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.config = config
        self.prefix = nn.Linear(config.cond_dim, config.n_prefix * config.n_embd)
        gpt_config = GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.n_prefix + config.n_tokens,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            activation_function=config.activation,
            tie_word_embeddings=config.tied_head,
            bos_token_id=None,
            eos_token_id=None,
        )
        self.gpt = GPT2LMHeadModel(gpt_config)
        if not config.tied_head:
            self.gpt.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        if config.null_cond:
            self.null_prefix = nn.Parameter(0.02 * torch.randn(config.n_prefix, config.n_embd))

    def prefix_embeds(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """cond [B, E] -> [B, n_prefix, n_embd] (the embedding is L2-normalised first); where
        ``drop`` [B] (bool) is set, the learned null prefix instead (condition dropout)."""
        cond = F.normalize(cond.float(), dim=-1).to(self.prefix.weight.dtype)
        prefix = self.prefix(cond).view(cond.shape[0], self.config.n_prefix, self.config.n_embd)
        if drop is not None:
            # torch.where keeps the null prefix in the graph even when nothing is dropped, so
            # DDP sees every parameter used.
            null = self.null_prefix.to(prefix.dtype).expand_as(prefix)
            prefix = torch.where(drop.view(-1, 1, 1), null, prefix)
        return prefix

    def null_embeds(self, batch: int) -> torch.Tensor:
        """The unconditional prefix [batch, n_prefix, n_embd] (a model with null_cond only)."""
        if not self.config.null_cond:
            raise ValueError(
                "this clipgen model has no unconditional prefix (train it with --cond-dropout "
                "above 0 to use guidance)"
            )
        return self.null_prefix.expand(batch, -1, -1)

    def forward(
        self, cond: torch.Tensor, tokens: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """cond [B, E], tokens [B, T] -> logits [B, T, V]; logits[:, t] predicts tokens[:, t]
        from the prefix and tokens[:, :t]. ``drop`` [B]: condition dropout (null_cond models)."""
        prefix = self.prefix_embeds(cond, drop)  # [B, P, C]
        seen = self.gpt.transformer.wte(tokens[:, :-1])  # [B, T-1, C]
        embeds = torch.cat([prefix, seen], dim=1)  # [B, P+T-1, C]
        logits = self.gpt(inputs_embeds=embeds, use_cache=False).logits  # [B, P+T-1, V]
        return logits[:, self.config.n_prefix - 1 :]  # [B, T, V]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------- sampling


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [B, V] with everything outside the top k and outside the smallest set whose
    probability reaches top_p set to -inf (0 / 1.0 = no limit)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample_tokens(
    model: ClipGen,
    cond: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator,
    on_row: Callable[[int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], None] | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """cond [B, E] -> tokens [B, T], one candidate per row of ``cond``, with the KV cache.

    ``on_row(row, tokens_so_far [B, (row+1)*grid_w])`` runs after each full token row;
    ``should_stop()`` runs before each row and may raise to cancel. Same generator state,
    same tokens. ``generator`` must live on the model's device. ``guidance``: classifier-free
    guidance (start_sampling)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    config = model.config
    device = model.prefix.weight.device
    cond = cond.to(device)
    batch = cond.shape[0]
    tokens = torch.empty(batch, config.n_tokens, dtype=torch.long, device=device)
    cache, embeds = start_sampling(model, cond, guidance=guidance)
    for t in range(config.n_tokens):
        if t % config.grid_w == 0 and should_stop is not None:
            should_stop()
        tokens[:, t] = sample_next(
            model, cache, embeds, [(batch, generator)], temperature, top_k, top_p
        )
        embeds = model.gpt.transformer.wte(tokens[:, t : t + 1])  # [B, 1, C]
        if on_row is not None and (t + 1) % config.grid_w == 0:
            on_row(t // config.grid_w, tokens[:, : t + 1])
    return tokens


class GuidedCache:
    """The KV cache of classifier-free guidance: 2B rows, the B conditioned ones then the same
    B unconditioned (the learned null prefix). Callers see B rows: sample_next feeds both halves
    and mixes their logits, batch_select_indices keeps a row in both halves."""

    def __init__(self, inner: Any, pending: torch.Tensor, guidance: float) -> None:
        self.inner = inner
        self.pending: torch.Tensor | None = pending  # [B, P+t, C]: the unconditioned first feed
        self.guidance = guidance
        self.rows = pending.shape[0]

    def batch_select_indices(self, index: torch.Tensor) -> None:
        self.inner.batch_select_indices(torch.cat([index, index + self.rows]))
        if self.pending is not None:
            self.pending = self.pending[index]
        self.rows = len(index)


def start_sampling(
    model: ClipGen, cond: torch.Tensor, tokens: torch.Tensor | None = None, guidance: float = 1.0
) -> tuple[Any, torch.Tensor]:
    """A fresh KV cache and what the first step feeds: the prefix of ``cond`` [B, E], then the
    tokens [B, t] already sampled (a batch that lost its cache picks up where it was).

    ``guidance`` g != 1 (a null_cond model): classifier-free guidance; each step's logits
    become unconditional + g * (conditional - unconditional) (GuidedCache)."""
    from transformers import DynamicCache

    embeds = model.prefix_embeds(cond)  # [B, P, C]
    unconditional = model.null_embeds(cond.shape[0]).to(embeds.dtype) if guidance != 1 else None
    if tokens is not None and tokens.shape[1] > 0:
        seen = model.gpt.transformer.wte(tokens)  # [B, t, C]
        embeds = torch.cat([embeds, seen], dim=1)  # [B, P+t, C]
        if unconditional is not None:
            unconditional = torch.cat([unconditional, seen], dim=1)
    if unconditional is not None:
        return GuidedCache(DynamicCache(), unconditional, guidance), embeds
    return DynamicCache(), embeds


def sample_next(
    model: ClipGen,
    cache: Any,
    embeds: torch.Tensor,
    draws: list[tuple[int, torch.Generator]],
    temperature: float,
    top_k: int,
    top_p: float,
) -> torch.Tensor:
    """Feed ``embeds`` [B, n, C] (the cache grows in place) and sample the next token [B].

    ``draws``: (rows, generator) for consecutive groups of rows; each group's tokens are drawn
    from its own generator, so jobs batched together draw exactly what each would alone."""
    # The cache is passed by position: transformers 5 renamed the argument (past_key_values ->
    # cache).
    if isinstance(cache, GuidedCache):
        unconditional = embeds if cache.pending is None else cache.pending
        cache.pending = None
        feed = torch.cat([embeds, unconditional])  # [2B, n, C]
        both = model.gpt(None, cache.inner, inputs_embeds=feed, use_cache=True).logits[:, -1]
        conditional, unconditional = both.float().chunk(2)  # [B, V] each
        logits = unconditional + cache.guidance * (conditional - unconditional)
    else:
        out = model.gpt(None, cache, inputs_embeds=embeds, use_cache=True)
        logits = out.logits[:, -1].float()  # [B, V]
    logits = logits / temperature
    logits = filter_logits(logits, top_k=top_k, top_p=top_p)
    probs = logits.softmax(-1)  # [B, V]
    picked, first = [], 0
    for rows, generator in draws:
        picked.append(torch.multinomial(probs[first : first + rows], 1, generator=generator))
        first += rows
    return torch.cat(picked).squeeze(1)  # [B]


# --------------------------------------------------------------------------- VQGAN tokens


@torch.no_grad()
def encode_tokens(vqgan: Any, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] in [0, 1] -> VQGAN codes [B, H/f * W/f], row-major."""
    h = vqgan.quant_conv(vqgan.encoder(images * 2 - 1))  # [B, D, h, w]
    if vqgan.gumbel:
        return vqgan.quantize.proj(h).argmax(dim=1).flatten(1)
    flat = h.movedim(1, -1).float()  # [B, h, w, D]
    codebook = vqgan.codebook.float()  # [N, D]
    distances = (
        flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(-1)
    )  # [B, h, w, N]
    return distances.argmin(-1).flatten(1)


def tokens_to_latents(vqgan: Any, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """codes [B, T] -> quantised latents [B, D, grid_h, grid_w] (what VQGAN.decode takes)."""
    latents = vqgan.codebook[tokens]  # [B, T, D]
    return latents.view(tokens.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2)


def decode_tokens(vqgan: Any, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """codes [B, T] -> images [B, 3, grid_h*f, grid_w*f] in [0, 1]."""
    decoded = vqgan.decode(tokens_to_latents(vqgan, tokens, grid_h, grid_w))
    return ((decoded.float() + 1) / 2).clamp(0, 1)


# --------------------------------------------------------------------------- saving, loading


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(temp_path)``, flush to disk, then rename over ``path``."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


def _weights(model: ClipGen) -> dict[str, torch.Tensor]:
    # GPT-2 ties lm_head to wte; safetensors refuses shared storage, so store wte once (an
    # untied head is stored as itself).
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k != "gpt.lm_head.weight" or not model.config.tied_head
    }


def save_model(
    model: ClipGen, meta: dict[str, Any], out_dir: str | Path, *, ema: ClipGen | None = None
) -> None:
    """``out_dir``/model.safetensors (+ ema.safetensors with ``ema``) + config.json (config +
    meta), each written atomically; the weights go first, so config.json (what load_model
    reads first) is the last word."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    metadata = {"format": FORMAT, "save_id": save_id}
    atomic_write(
        out_dir / WEIGHTS_FILE, lambda p: save_file(_weights(model), str(p), metadata=metadata)
    )
    if ema is not None:
        atomic_write(
            out_dir / EMA_FILE, lambda p: save_file(_weights(ema), str(p), metadata=metadata)
        )
    else:
        (out_dir / EMA_FILE).unlink(missing_ok=True)  # an older save's EMA is not this one's
    document = {
        "format": FORMAT,
        "save_id": save_id,
        "config": model.config.to_dict(),
        "meta": meta,
        "ema": ema is not None,
    }
    text = json.dumps(document, indent=2, sort_keys=True)
    atomic_write(out_dir / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))


def read_model_config(model_dir: str | Path) -> tuple[ClipGenConfig, dict[str, Any], str]:
    """(config, meta, save_id) from ``model_dir``/config.json, or CheckpointError."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no clipgen model in {model_dir}: {CONFIG_FILE} is missing; {TRAIN_HINT}"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            raise ValueError(f"format is {document.get('format')!r}, not {FORMAT!r}")
        config = ClipGenConfig.from_dict(document["config"])
        meta = document.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError("meta is not a table")
        return config, meta, str(document.get("save_id", ""))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{path} is not a clipgen model config ({type(error).__name__}: {error}); "
            f"save the model again or {TRAIN_HINT}"
        ) from None


def load_model(
    model_dir: str | Path, device: str | torch.device, *, ema: bool = True
) -> tuple[ClipGen, dict[str, Any]]:
    """The model saved in ``model_dir`` (eval mode, on ``device``) and its meta: its EMA
    weights where the folder has them and ``ema``, else the raw ones."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config, meta, save_id = read_model_config(model_dir)
    path = model_dir / WEIGHTS_FILE
    if ema and (model_dir / EMA_FILE).is_file():
        path = model_dir / EMA_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (config.json is there); {TRAIN_HINT}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            file_id = (handle.metadata() or {}).get("save_id", "")
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(error).__name__}); copy the model directory "
            f"again or train it again"
        ) from None
    if save_id and file_id != save_id:
        raise CheckpointError(
            f"{path} and {CONFIG_FILE} in {model_dir} come from different saves (an interrupted "
            f"copy or save?); copy the whole model directory again"
        )
    model = ClipGen(config)
    if config.tied_head:
        state["gpt.lm_head.weight"] = state.get("gpt.transformer.wte.weight", torch.empty(0))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path} does not fit its {CONFIG_FILE} ({str(error)[:200]}); copy the whole model "
            f"directory again"
        ) from None
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- compatibility

PROBE_TEXT = "a photo of a red circle"


def vqgan_fingerprint(vqgan: Any) -> dict[str, Any]:
    """What identifies a VQGAN's token space: its size and a hash of its codebook."""
    codebook = vqgan.codebook.detach().float().cpu().contiguous()  # [N, D]
    return {
        "name": getattr(vqgan, "name", ""),
        "n_embed": int(codebook.shape[0]),
        "embed_dim": int(codebook.shape[1]),
        "factor": int(vqgan.factor),
        "codebook_sha256": hashlib.sha256(codebook.numpy().tobytes()).hexdigest(),
    }


def conditioning_model(perceptor: Any) -> Any:
    """The CLIP model CLIP-GEN conditions on: the first of a perceptor's ensemble."""
    return perceptor.models[0] if hasattr(perceptor, "models") else perceptor


@torch.no_grad()
def clip_fingerprint(perceptor: Any) -> dict[str, Any]:
    """Name, pretrained weights, embedding size and a probe embedding (text and image) of the
    conditioning CLIP (a Perceptor's first model, or a PerceptorModel)."""
    m = conditioning_model(perceptor)
    device = m.mean.device
    text = m.model.encode_text(m.tokenizer([PROBE_TEXT]).to(device)).float()  # [1, E]
    ramp = torch.linspace(0, 1, m.input_size, device=device)
    grid = ramp.view(1, -1).expand(m.input_size, -1)  # [s, s]: a left-to-right ramp
    probe = torch.stack([grid, grid.T, 1 - grid])[None]  # [1, 3, s, s]
    image = m.model.encode_image(m.normalize(probe)).float()  # [1, E]
    name, _, pretrained = m.name.partition("/")
    return {
        "model": name,
        "pretrained": Path(pretrained).name,
        "embed_dim": int(text.shape[-1]),
        "input_size": int(m.input_size),
        "probe": F.normalize(torch.cat([text, image]), dim=-1).cpu().flatten().tolist(),
    }


def _probe_similarity(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a).view(2, -1), torch.tensor(b).view(2, -1)
    return float(F.cosine_similarity(x, y, dim=-1).min())


def vqgan_mismatch(trained: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why ``current`` is not the VQGAN described by ``trained``, or None."""
    for key in ("n_embed", "embed_dim", "factor", "codebook_sha256"):
        if trained.get(key) != current.get(key):
            what = "codebook" if key == "codebook_sha256" else key
            return (
                f"it was trained with VQGAN {trained.get('name') or '?'!r} ({trained.get('n_embed')} "
                f"codes, factor {trained.get('factor')}) but the configured VQGAN "
                f"{current.get('name') or '?'!r} has a different {what}"
            )
    return None


def clip_mismatch(trained: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why ``current`` is not the CLIP described by ``trained``, or None."""
    same = (
        trained.get("model") == current.get("model")
        and trained.get("embed_dim") == current.get("embed_dim")
        and len(trained.get("probe", [])) == len(current.get("probe", []))
    )
    # Probes agree to rounding across devices and precisions; other weights do not.
    if same and _probe_similarity(trained["probe"], current["probe"]) > 0.98:
        return None
    return (
        f"it was trained with CLIP {trained.get('model')}/{trained.get('pretrained')} but the "
        f"configured first [[clip]] is {current.get('model')}/{current.get('pretrained')} "
        f"(other weights)"
    )


def check_compatible(meta: dict[str, Any], vqgan: Any, perceptor: Any, *, where: str = "") -> None:
    """Raise CheckpointError when ``vqgan`` or the perceptor's first CLIP is not the one the
    model (``meta`` from load_model) was trained with."""
    label = f"the clipgen model {where}".rstrip()
    if "vqgan" not in meta or "clip" not in meta:
        raise CheckpointError(f"{label} does not record its VQGAN and CLIP; {TRAIN_HINT}")
    reason = vqgan_mismatch(meta["vqgan"], vqgan_fingerprint(vqgan))
    if reason is None:
        reason = clip_mismatch(meta["clip"], clip_fingerprint(perceptor))
    if reason is not None:
        raise CheckpointError(
            f"{label} cannot be used here: {reason}. Configure the models it was trained with, "
            f"or train it again with these"
        )
