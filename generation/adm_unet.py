"""The ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs"), as OpenAI published it
in guided-diffusion: the pixel-space prior of CLIP-guided diffusion and Disco Diffusion.

Written for this project, with the parameter names of OpenAI's checkpoints, so a published
``.pt`` (a plain state dict: ``256x256_diffusion_uncond.pt``,
``512x512_diffusion_uncond_finetune_008100.pt``) loads with ``load_state_dict(strict=True)`` and
no key mapping. OpenAI's code is not needed at run time.

Why not diffusers' ``UNet2DModel``: it can express the 256 px model (scale-shift norm, resnet
up/down sampling, 64-channel heads), but it sizes the timestep embedding from the first block's
width. The 512 px model's first level is half the base width (channel multiplier 0.5), while its
timestep embedding is built from the full base width (256 sinusoids -> 1024): UNet2DModel has no
way to say so.

Architecture facts (from guided-diffusion's unet.py and script_util.py):
- timestep: ``base`` sinusoids, cos half first, frequencies exp(-ln(10000) * i / (base / 2)),
  then Linear(base, 4 base), SiLU, Linear(4 base, 4 base).
- every GroupNorm has 32 groups, eps 1e-5, computed in float32.
- residual block: norm, SiLU, [resample], 3x3 conv; the embedding gives a scale and shift
  applied after the second norm (``use_scale_shift_norm``); SiLU, dropout, 3x3 conv; a 1x1 conv
  on the skip path when the width changes. Resampling blocks (``resblock_updown``) resample both
  paths: nearest x2 up, 2x2 average pool down.
- attention: norm, a 1x1 conv to q, k, v laid out head by head ([q, k, v] per head, "legacy"
  order), softmax(q k / sqrt(head_dim)), 1x1 conv out, residual.
- ``attention_resolutions`` are downsampling rates (image_size / resolution). Both published
  models attend at 32, 16 and 8 px: rates 8, 16, 32 at 256 px, and 16, 32, 64 at 512 px.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLASS_NAME = "ADMUNet"


@dataclass(frozen=True)
class ADMConfig:
    """The hyperparameters of guided-diffusion's UNetModel that shape its weights."""

    image_size: int = 256  # the training size; attention is placed by downsampling rate
    in_channels: int = 3
    model_channels: int = 256  # the base width ("num_channels")
    out_channels: int = 6  # 6: eps and the variance interpolation v (learned sigma)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 16, 32)  # downsampling rates
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4  # used when num_head_channels is -1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True  # conv up/down blocks (used when resblock_updown is false)
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def factor(self) -> int:
        """Width and height must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(int(m * self.model_channels) for m in self.channel_mult)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ADMConfig:
        names = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in names}
        for key in ("attention_resolutions", "channel_mult"):
            if key in values:
                values[key] = tuple(values[key])
        extra = {k: v for k, v in data.items() if k not in names and not k.startswith("_")}
        return cls(**values, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> ADMConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("_class_name") != CLASS_NAME:
            raise ValueError(f'{path} is not an ADM UNet config ("_class_name": "{CLASS_NAME}")')
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return {"_class_name": CLASS_NAME, **data}


def is_adm_config(path: str | Path) -> bool:
    """Whether a UNet JSON names this architecture (else it is a diffusers UNet2DModel)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("_class_name") == CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


class GroupNorm32(nn.GroupNorm):
    """32 groups, normalised in float32 whatever the input's precision (as ADM does)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [B] -> [B, dim]: cosines of every frequency, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # [B, half]
    embedding = torch.cat([angles.cos(), angles.sin()], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class Resample(nn.Module):
    """x2 nearest up or /2 down, with an optional 3x3 conv (``conv``: the checkpoint's name:
    ``conv`` for up, ``op`` for down)."""

    def __init__(self, channels: int, *, up: bool, with_conv: bool) -> None:
        super().__init__()
        self.up = up
        if with_conv and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif with_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.with_conv = with_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if self.with_conv else x
        return self.op(x) if self.with_conv else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """A residual block conditioned on the timestep embedding, optionally resampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        dropout: float,
        scale_shift: bool,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample = up or down
        if self.resample:
            self.h_upd = Resample(channels, up=up, with_conv=False)
            self.x_upd = Resample(channels, up=up, with_conv=False)
        self.scale_shift = scale_shift
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]  # [B, C or 2C, 1, 1]
        if self.scale_shift:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the pixels, heads laid out [q, k, v] head by head."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)  # [B, C, T]
        qkv = self.qkv(self.norm(flat))  # [B, 3C, T]
        head_dim = c // self.heads
        # [B, heads, 3 * head_dim, T] -> q, k, v each [B, heads, T, head_dim]
        q, k, v = qkv.reshape(b, self.heads, 3 * head_dim, -1).transpose(2, 3).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, heads, T, head_dim]
        h = attended.transpose(2, 3).reshape(b, c, -1)  # [B, C, T]
        return (flat + self.proj_out(h)).reshape(b, c, height, width)


class EmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks among them also get the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel (unconditional): x_t [B, C, H, W], t [B] -> [B, out, H, W]."""

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        self.config = config
        base = config.model_channels
        emb = 4 * base
        widths = config.block_out_channels

        def res(c_in: int, c_out: int, **resample: bool) -> ResBlock:
            return ResBlock(
                c_in,
                emb,
                c_out,
                dropout=config.dropout,
                scale_shift=config.use_scale_shift_norm,
                **resample,
            )

        def heads(channels: int) -> int:
            if config.num_head_channels == -1:
                return config.num_heads
            return channels // config.num_head_channels

        self.time_embed = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))

        # Encoder: a conv, then per level num_res_blocks blocks (+ attention), then a downsample.
        ch = widths[0]
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        skips = [ch]  # the widths the decoder's blocks concatenate, in order
        rate = 1
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if rate in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, heads(ch)))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(widths) - 1:
                down = (
                    res(ch, ch, down=True)
                    if config.resblock_updown
                    else Resample(ch, up=False, with_conv=config.conv_resample)
                )
                self.input_blocks.append(EmbedSequential(down))
                skips.append(ch)
                rate *= 2

        self.middle_block = EmbedSequential(res(ch, ch), AttentionBlock(ch, heads(ch)), res(ch, ch))

        # Decoder: per level (deepest first) num_res_blocks + 1 blocks over [h, skip].
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), width)]
                ch = width
                if rate in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, heads(ch)))
                if level and i == config.num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True)
                        if config.resblock_updown
                        else Resample(ch, up=True, with_conv=config.conv_resample)
                    )
                    rate //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(widths[0], config.out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """x [B, C, H, W] (H, W multiples of config.factor), t: a timestep of the 1000-step
        schedule, one per sample or one for all -> [B, out_channels, H, W]."""
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # [B]
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))  # [B, 4 base]
        emb = emb.to(x.dtype)
        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
