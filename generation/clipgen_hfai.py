"""HFAiLab/clip-gen's published CLIP-GEN checkpoints, read into our models (no training needed).

Their release (github.com/HFAiLab/clip-gen, v0.1.0, MIT licence) has ``gpt_coco.pt`` and
``vqgan_coco.pt``, trained on COCO images conditioned on CLIP ViT-B/32 image embeddings. Both are
``torch.save`` of a training-state dict: ``{"model": state_dict, "epoch": ..., ...}`` plus the
optimiser states of their trainer (the GPT's ``"optimizer"``, ``"scaler"``, ``"step"``,
``"val_loss"``; the VQGAN's ``"opt_g"``, ``"opt_d"``). Only the tensors of ``"model"`` are read,
with the allow-listing reader of generation.checkpoints: no pickled code runs.

Their GPT (models/gpt.py), and how it maps onto ``ClipGen`` (transformers' GPT-2):
- ``tok_emb`` [V, C] -> wte; ``pos_emb`` [1, block_size, C] -> wpe (block_size 256: the CLIP
  prefix at position 0 and the first 255 of 256 tokens; wpe gets one unused row more);
- ``cond_proj`` Linear(512, C) -> prefix (one prefix token; their embedding is L2-normalised
  CLIP output, as ours);
- ``blocks.i.encoder``: torch's ``TransformerEncoderLayer`` (pre-norm, exact GELU, 4C MLP,
  causal mask): ``norm1`` -> ln_1, ``self_attn.in_proj_*`` ([3C, C], q k v stacked) -> c_attn
  (GPT-2's Conv1D keeps weights transposed: [C, 3C]), ``self_attn.out_proj`` -> attn.c_proj,
  ``norm2`` -> ln_2, ``linear1`` / ``linear2`` -> mlp.c_fc / mlp.c_proj (transposed);
  ``blocks.i.mask`` (a buffer) is dropped;
- ``norm`` -> ln_f; ``head`` Linear(C, V) with a bias, not tied to tok_emb -> an untied lm_head.
- Heads: not recorded in the weights; their presets use 64 channels per head (gpt2_medium:
  1024 / 16, gpt2_large: 1280 / 20), so n_head = C / 64.

Their VQGAN (models/vqgan.py, codec.py, quantizer.py) is taming's f16 architecture (ch 128,
ch_mult 1,1,2,2,4, 2 residual blocks, attention at 16 px, z 256) with other module names, 16384
codes of 256 dims, pictures normalised with mean = std = 0.5 (taming's [-1, 1]). Differences
handled here: its GroupNorms use torch's default eps 1e-5 (taming's 1e-6); attention is a
one-head ``nn.MultiheadAttention`` (q, k, v stacked in ``in_proj``) where taming has 1x1 convs;
the encoder ends with its quant_conv, the decoder starts with its post_quant_conv.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generation.checkpoints import load_checkpoint, load_into
from generation.clipgen_model import ClipGen, ClipGenConfig
from generation.errors import CheckpointError

FORMAT = "clipgen-hfai"
HEAD_DIM = 64  # channels per attention head in their GPT presets
RELEASE = "https://github.com/HFAiLab/clip-gen/releases/download/v0.1.0"
# What their COCO models were trained with: OpenAI's CLIP ViT-B/32 (open_clip's name and tag).
TRAINED_WITH_CLIP = "ViT-B-32/openai"
HOW_TO_GET = (
    f"HFAiLab/clip-gen's COCO models are {RELEASE}/gpt_coco.pt and {RELEASE}/vqgan_coco.pt "
    f"(generation/configs/defaults.toml names them): download them, or run once with network "
    f"access so they download into the cache."
)


def read_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors under "model" of one of their training-state files (or a bare state dict),
    without a DistributedDataParallel "module." prefix."""
    data = load_checkpoint(path)
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{Path(path).name} holds no state dict (expected {FORMAT} format)")
    state = {
        k.removeprefix("module."): v
        for k, v in data.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not state:
        raise CheckpointError(f"{Path(path).name} holds no tensors")
    return state


# --------------------------------------------------------------------------- GPT


def gpt_config(state: Mapping[str, torch.Tensor], name: str = "checkpoint") -> ClipGenConfig:
    """The ClipGenConfig their GPT's weights imply."""
    try:
        vocab, width = state["tok_emb.weight"].shape
        block_size = state["pos_emb"].shape[1]
        cond_dim = state["cond_proj.weight"].shape[1]
    except KeyError as error:
        raise CheckpointError(
            f"{name} is not a {FORMAT} GPT (no {error.args[0]}); give HFAiLab/clip-gen's gpt_*.pt"
        ) from None
    layers = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    grid = math.isqrt(block_size)
    if grid * grid != block_size or width % HEAD_DIM:
        raise CheckpointError(
            f"{name}: block size {block_size} is not a square token grid, or width {width} is "
            f"not a multiple of {HEAD_DIM}; not a {FORMAT} GPT"
        )
    return ClipGenConfig(
        vocab_size=int(vocab),
        grid_h=grid,
        grid_w=grid,
        cond_dim=int(cond_dim),
        n_prefix=1,
        n_layer=layers,
        n_head=int(width) // HEAD_DIM,
        n_embd=int(width),
        dropout=0.0,
        activation="gelu",
        tied_head=False,
    )


def _gpt_tensors(state: Mapping[str, torch.Tensor], config: ClipGenConfig) -> Iterator[tuple]:
    """(our key, tensor) for every tensor of ClipGen, from theirs."""
    yield "prefix.weight", state["cond_proj.weight"]
    yield "prefix.bias", state["cond_proj.bias"]
    yield "gpt.transformer.wte.weight", state["tok_emb.weight"]
    positions = state["pos_emb"][0]  # [block_size, C]
    # Our wpe has n_prefix + n_tokens rows; the last is never used (the last token is not fed).
    spare = config.n_prefix + config.n_tokens - positions.shape[0]
    yield (
        "gpt.transformer.wpe.weight",
        torch.cat([positions, positions.new_zeros(spare, config.n_embd)]),
    )
    for i in range(config.n_layer):
        theirs, ours = f"blocks.{i}.encoder.", f"gpt.transformer.h.{i}."
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            yield f"{ours}{b}.weight", state[f"{theirs}{a}.weight"]
            yield f"{ours}{b}.bias", state[f"{theirs}{a}.bias"]
        # GPT-2's Conv1D computes x @ W + b: weights are the transpose of a Linear's.
        pairs = (
            ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "attn.c_attn"),
            ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "attn.c_proj"),
            ("linear1.weight", "linear1.bias", "mlp.c_fc"),
            ("linear2.weight", "linear2.bias", "mlp.c_proj"),
        )
        for weight, bias, target in pairs:
            yield f"{ours}{target}.weight", state[theirs + weight].T.contiguous()
            yield f"{ours}{target}.bias", state[theirs + bias]
    yield "gpt.transformer.ln_f.weight", state["norm.weight"]
    yield "gpt.transformer.ln_f.bias", state["norm.bias"]
    yield "gpt.lm_head.weight", state["head.weight"]
    yield "gpt.lm_head.bias", state["head.bias"]


def load_gpt(path: str | Path, device: str | torch.device = "cpu") -> ClipGen:
    """Their GPT checkpoint as a ClipGen (eval mode, on ``device``)."""
    name = Path(path).name
    state = read_model_state(path)
    config = gpt_config(state, name)
    try:
        ours = dict(_gpt_tensors(state, config))
    except KeyError as error:
        raise CheckpointError(
            f"{name} lacks {error.args[0]}: not a complete {FORMAT} GPT"
        ) from None
    model = ClipGen(config)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{name} does not fit its own shapes ({str(error)[:200]})") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------- VQGAN


def _their_resblock(theirs: str, ours: str) -> Iterator[tuple[str, str]]:
    for a, b in (("block.0", "norm1"), ("block.2", "conv1"), ("block.3", "norm2"),
                 ("block.6", "conv2"), ("shortcut", "nin_shortcut")):  # fmt: skip
        for kind in ("weight", "bias"):
            yield f"{theirs}.{a}.{kind}", f"{ours}.{b}.{kind}"


def _attention(state: Mapping[str, torch.Tensor], theirs: str, ours: str) -> Iterator[tuple]:
    """One-head MultiheadAttention -> taming's q, k, v and proj_out 1x1 convs."""
    weights = state[f"{theirs}.attn.in_proj_weight"].chunk(3)  # 3 x [C, C]
    biases = state[f"{theirs}.attn.in_proj_bias"].chunk(3)
    for part, weight, bias in zip("qkv", weights, biases, strict=True):
        yield f"{ours}.{part}.weight", weight[:, :, None, None]
        yield f"{ours}.{part}.bias", bias
    yield f"{ours}.proj_out.weight", state[f"{theirs}.attn.out_proj.weight"][:, :, None, None]
    yield f"{ours}.proj_out.bias", state[f"{theirs}.attn.out_proj.bias"]
    for kind in ("weight", "bias"):
        yield f"{ours}.norm.{kind}", state[f"{theirs}.norm.{kind}"]


def _renamed(state: Mapping[str, torch.Tensor], pairs: Iterator[tuple[str, str]]) -> Iterator:
    for theirs, ours in pairs:
        if theirs in state:  # a shortcut exists only where the width changes
            yield ours, state[theirs]


def vqgan_to_taming(
    state: Mapping[str, torch.Tensor], ddconfig: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Their VQGAN's tensors under taming VQModel's names, walking both layouts in the order
    they are built for ``ddconfig`` (levels, residual blocks, attention, resampling)."""
    levels = len(ddconfig["ch_mult"])
    blocks = int(ddconfig["num_res_blocks"])
    attn_at = set(ddconfig["attn_resolutions"])
    out: dict[str, torch.Tensor] = {}

    def conv(theirs: str, ours: str) -> None:
        out.update(_renamed(state, ((f"{theirs}.{k}", f"{ours}.{k}") for k in ("weight", "bias"))))

    def mid(theirs: str, ours: str) -> None:
        out.update(_renamed(state, _their_resblock(f"{theirs}.0", f"{ours}.block_1")))
        out.update(_attention(state, f"{theirs}.1", f"{ours}.attn_1"))
        out.update(_renamed(state, _their_resblock(f"{theirs}.2", f"{ours}.block_2")))

    # Encoder: encoder.down is one flat Sequential there, per-level modules in taming.
    conv("encoder.conv_in", "encoder.conv_in")
    index, resolution = 0, int(ddconfig["resolution"])
    for level in range(levels):
        for j in range(blocks):
            theirs = f"encoder.down.{index}"
            out.update(_renamed(state, _their_resblock(theirs, f"encoder.down.{level}.block.{j}")))
            index += 1
            if resolution in attn_at:
                out.update(
                    _attention(state, f"encoder.down.{index}", f"encoder.down.{level}.attn.{j}")
                )
                index += 1
        if level != levels - 1:
            conv(f"encoder.down.{index}.conv", f"encoder.down.{level}.downsample.conv")
            index += 1
            resolution //= 2
    mid("encoder.mid", "encoder.mid")
    conv("encoder.final.0", "encoder.norm_out")
    conv("encoder.final.2", "encoder.conv_out")
    conv("encoder.final.3", "quant_conv")

    # Decoder: decoder.up runs from the deepest level up, one flat Sequential.
    conv("decoder.quant_conv_in", "post_quant_conv")
    conv("decoder.conv_in", "decoder.conv_in")
    mid("decoder.mid", "decoder.mid")
    index, resolution = 0, int(ddconfig["resolution"]) // 2 ** (levels - 1)
    for level in reversed(range(levels)):
        for j in range(blocks + 1):
            theirs = f"decoder.up.{index}"
            out.update(_renamed(state, _their_resblock(theirs, f"decoder.up.{level}.block.{j}")))
            index += 1
            if resolution in attn_at:
                out.update(_attention(state, f"decoder.up.{index}", f"decoder.up.{level}.attn.{j}"))
                index += 1
        if level != 0:
            conv(f"decoder.up.{index}.conv", f"decoder.up.{level}.upsample.conv")
            index += 1
            resolution *= 2
    conv("decoder.final.0", "decoder.norm_out")
    conv("decoder.final.2", "decoder.conv_out")
    out["quantize.embedding.weight"] = state["quantizer.embedding.weight"]
    return out


def use_their_norm_eps(model: nn.Module) -> None:
    """Their GroupNorms normalise with torch's default eps (1e-5), taming's with 1e-6."""
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.eps = 1e-5


def load_vqgan_into(model: nn.Module, path: str | Path, ddconfig: Mapping[str, Any]) -> None:
    """Their VQGAN checkpoint into our taming-layout VQGAN (built from the matching YAML)."""
    name = Path(path).name
    state = read_model_state(path)
    if "quantizer.embedding.weight" not in state:
        raise CheckpointError(
            f"{name} is not a {FORMAT} VQGAN (no quantizer.embedding.weight); give HFAiLab/"
            f'clip-gen\'s vqgan_*.pt, or drop format = "{FORMAT}" for a taming checkpoint'
        )
    try:
        taming = vqgan_to_taming(state, ddconfig)
    except KeyError as error:
        raise CheckpointError(
            f"{name} lacks {error.args[0]}: its architecture is not the config's (use "
            f"vqgan_imagenet_f16_16384.yaml for their COCO VQGAN)"
        ) from None
    load_into(model, taming, name, hint="use vqgan_imagenet_f16_16384.yaml for their COCO VQGAN")
    use_their_norm_eps(model)


# --------------------------------------------------------------------------- checks


def is_checkpoint_spec(spec: str) -> bool:
    """A clipgen ``model`` that names one of their .pt files (a path, hf:// or URL), not one of
    our model folders."""
    return spec.startswith(("hf://", "http://", "https://")) or spec.lower().endswith(
        (".pt", ".pth")
    )


def compatibility_problem(
    model: ClipGen, codebook_size: int, clip_name: str, embed_dim: int, wanted: str
) -> str | None:
    """Why the configured VQGAN or first CLIP cannot serve their GPT, or None. Their files
    record neither, so the checks are by size and by the CLIP's name (``wanted``: "model" or
    "model/pretrained")."""
    config = model.config
    if config.vocab_size != codebook_size:
        return f"it predicts {config.vocab_size} codes but the configured VQGAN has {codebook_size}"
    if config.cond_dim != embed_dim:
        return (
            f"it takes {config.cond_dim}-d CLIP embeddings but the first [[clip]] gives {embed_dim}"
        )
    model_name, _, pretrained = wanted.partition("/")
    name, _, tag = clip_name.partition("/")
    if name != model_name or (pretrained and Path(tag).name != pretrained):
        return (
            f"it was trained with CLIP {wanted} but the first [[clip]] is {clip_name} "
            f'(set model = "{model_name}" and pretrained = "{pretrained}" in the first '
            f"[[clip]], or trained_with_clip if yours differs)"
        )
    return None
