"""HFAiLab/clip-gen's published CLIP-GEN checkpoints (gpt_coco.pt, vqgan_coco.pt) load through
the models TOML and give their models' outputs, and `generator: clipgen` paints with them.

Their code is not on the registry, so the reference here is written from their architecture
(models/gpt.py, codec.py, quantizer.py, discriminator.py of github.com/HFAiLab/clip-gen): the
same module names, hence the same state-dict keys, at a tiny size. The files are saved as their
trainers save theirs: ``torch.save`` of a dict with the weights under "model", optimiser
states and counters beside them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from generation import clipgen_hfai
from generation.__main__ import main
from generation.clipgen_model import (
    decode_tokens,
    encode_tokens,
    sample_tokens,
    save_model,
)
from generation.clipgen_model import load_model as load_model_dir
from generation.errors import CheckpointError
from generation.generators import clipgen, vqgan
from generation.models import CONFIG_DIR, ModelsConfig, ModelStore
from generation.png import read_png_metadata
from tests.generation.generator_helpers import one_torch_thread  # noqa: F401 - autouse

# --------------------------------------------------------------------------- their GPT

WIDTH, HEADS, LAYERS, CODES, GRID = 128, 2, 2, 64, 8  # 64 channels per head, as theirs
CLIP_DIM = 32  # the tiny CLIP's embedding size (theirs: ViT-B/32, 512)


class TheirBlock(nn.Module):
    """A pre-norm torch TransformerEncoderLayer with a causal mask buffer."""

    def __init__(self, width: int, heads: int, block_size: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            width, heads, 4 * width, 0.0, activation=F.gelu, batch_first=True, norm_first=True
        )
        self.register_buffer("mask", ~torch.ones(block_size, block_size, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        return self.encoder(x, self.mask[:n, :n])


class TheirGPT(nn.Module):
    """The CLIP embedding, projected, is token 0; learned positions; an untied head."""

    def __init__(self, block_size: int = GRID * GRID) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(CODES, WIDTH)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, WIDTH))
        self.cond_proj = nn.Linear(CLIP_DIM, WIDTH)
        self.drop = nn.Dropout(0.0)
        self.blocks = nn.Sequential(*(TheirBlock(WIDTH, HEADS, block_size) for _ in range(LAYERS)))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, CODES)

    def forward(self, idx: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cond_proj(embed)[:, None], self.tok_emb(idx)], dim=1)  # [B, L+1, C]
        x = self.drop(x + self.pos_emb[:, : x.shape[1]])
        return self.head(self.norm(self.blocks(x)))  # [B, L+1, V]


def their_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Their top-k, then top-p that keeps the first token past the threshold."""
    kth = torch.topk(logits, top_k).values[..., -1:]
    logits = logits.masked_fill(logits < kth, -torch.inf)
    sorted_logits, order = torch.sort(logits, descending=True)
    past = sorted_logits.softmax(-1).cumsum(-1) > top_p
    past = torch.cat([torch.zeros_like(past[..., :1]), past[..., :-1]], dim=-1)
    return logits.masked_fill(past.scatter(1, order, past), -torch.inf)


# --------------------------------------------------------------------------- their VQGAN
# Tiny: ch 32, ch_mult (1, 1, 2), one residual block, attention at 8 px of 32, z 32, 64 codes.

CH, MULT, RES, ATTN, Z = 32, (1, 1, 2), 32, (8,), 32


class TheirResnet(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(32, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(32, c_out), nn.SiLU(), nn.Dropout(0.0),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )  # fmt: skip
        self.has_shortcut = c_in != c_out
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.shortcut(x) if self.has_shortcut else x) + self.block(x)


class TheirAttn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, c)
        self.attn = nn.MultiheadAttention(c, num_heads=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class TheirDown(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class TheirUp(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def mid(c: int) -> nn.Sequential:
    return nn.Sequential(TheirResnet(c, c), TheirAttn(c), TheirResnet(c, c))


class TheirEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, CH, 3, padding=1)
        layers, c_in, res = [], CH, RES
        for level, mult in enumerate(MULT):
            layers.append(TheirResnet(c_in, CH * mult))
            c_in = CH * mult
            if res in ATTN:
                layers.append(TheirAttn(c_in))
            if level != len(MULT) - 1:
                layers.append(TheirDown(c_in))
                res //= 2
        self.down = nn.Sequential(*layers)
        self.mid = mid(c_in)
        self.final = nn.Sequential(
            nn.GroupNorm(32, c_in), nn.SiLU(), nn.Conv2d(c_in, Z, 3, padding=1), nn.Conv2d(Z, Z, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.mid(self.down(self.conv_in(x))))


class TheirDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c_in = CH * MULT[-1]
        self.quant_conv_in = nn.Conv2d(Z, Z, 1)
        self.conv_in = nn.Conv2d(Z, c_in, 3, padding=1)
        self.mid = mid(c_in)
        layers, res = [], RES // 2 ** (len(MULT) - 1)
        for level in reversed(range(len(MULT))):
            for _ in range(2):  # num_res_blocks + 1
                layers.append(TheirResnet(c_in, CH * MULT[level]))
                c_in = CH * MULT[level]
                if res in ATTN:
                    layers.append(TheirAttn(c_in))
            if level != 0:
                layers.append(TheirUp(c_in))
                res *= 2
        self.up = nn.Sequential(*layers)
        self.final = nn.Sequential(
            nn.GroupNorm(32, c_in), nn.SiLU(), nn.Conv2d(c_in, 3, 3, padding=1)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.final(self.up(self.mid(self.conv_in(self.quant_conv_in(z)))))


class TheirQuantizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(CODES, Z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        vectors = x.permute(0, 2, 3, 1).reshape(-1, c)
        return torch.cdist(vectors, self.embedding.weight).argmin(1).view(b, h, w)


class TheirVQGAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = TheirEncoder()
        self.decoder = TheirDecoder()
        self.quantizer = TheirQuantizer()
        # Their checkpoints carry the GAN's discriminator (convs and batch norms) too.
        self.discriminator = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8))


TINY_YAML = f"""model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {Z}
    n_embed: {CODES}
    ddconfig: {{double_z: false, z_channels: {Z}, resolution: {RES}, in_channels: 3, out_ch: 3,
      ch: {CH}, ch_mult: {list(MULT)}, num_res_blocks: 1, attn_resolutions: {list(ATTN)},
      dropout: 0.0}}
"""


# --------------------------------------------------------------------------- files


def randomise(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.1)
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2)
    return module.eval()


def adam_state(module: nn.Module) -> dict:
    """An optimiser state with tensors in it, as a trainer's checkpoint has."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    sum(p.sum() for p in module.parameters()).backward()
    optimizer.step()
    module.zero_grad()
    return optimizer.state_dict()


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, TheirGPT, TheirVQGAN]:
    """gpt_coco.pt and vqgan_coco.pt as their trainers write them, and a models TOML that
    names them as a user would."""
    gpt, vq = randomise(TheirGPT(), 0), randomise(TheirVQGAN(), 1)
    torch.save(
        {"model": gpt.state_dict(), "optimizer": adam_state(gpt), "scaler": {}, "epoch": 200,
         "step": 0, "val_loss": 4.5},
        tmp_path / "gpt_coco.pt",
    )  # fmt: skip
    torch.save(
        {"model": vq.state_dict(), "opt_g": adam_state(vq.decoder), "opt_d": {}, "epoch": 100,
         "step": 0, "loss_recon": 0.1},
        tmp_path / "vqgan_coco.pt",
    )  # fmt: skip
    (tmp_path / "tiny-hfai-vqgan.yaml").write_text(TINY_YAML)
    models = tmp_path / "models.toml"
    models.write_text(
        f"""download = false
[[clip]]
model = "imagine-tiny-clip"
config = "{CONFIG_DIR / "imagine-tiny-clip.json"}"
seed = 0

[generators.vqgan]
default = "coco"

[generators.vqgan.models.coco]
config = "tiny-hfai-vqgan.yaml"
checkpoint = "vqgan_coco.pt"
format = "clipgen-hfai"

[generators.clipgen]
model = "gpt_coco.pt"
vqgan = "coco"
trained_with_clip = "imagine-tiny-clip"
candidates = 2
batch_size = 2
"""
    )
    return models, gpt, vq


def store_for(models: Path) -> ModelStore:
    return ModelStore(ModelsConfig.from_toml(models), device="cpu")


# --------------------------------------------------------------------------- tests


def test_their_gpt_gives_the_same_logits_and_samples_the_same_tokens(release) -> None:
    models, gpt, _ = release
    store = store_for(models)
    model, name = clipgen.load_model(store)
    assert name == "gpt_coco.pt"
    assert (model.config.n_layer, model.config.n_head, model.config.grid_h) == (LAYERS, HEADS, 8)

    cond = F.normalize(torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(4)), dim=-1)
    tokens = torch.randint(0, CODES, (3, GRID * GRID), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = gpt(tokens[:, :-1], cond)  # [3, 64, V]: what demo.py's sampler reads
        ours = model(cond, tokens)  # [3, 64, V]
    difference = float((theirs - ours).abs().max())
    print(f"CLIP-GEN GPT logits: max abs difference {difference:.3g}")
    assert difference < 1e-4

    # Their sampler (full forward per token) and ours (KV cache), same draws, same tokens.
    top_k, top_p = 20, 0.95
    ours_sampled = sample_tokens(
        model, cond, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(6)
    )
    generator = torch.Generator().manual_seed(6)
    theirs_sampled = torch.zeros(3, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(GRID * GRID):
            logits = their_filter(gpt(theirs_sampled, cond)[:, -1], top_k, top_p)
            drawn = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            theirs_sampled = torch.cat([theirs_sampled, drawn], dim=1)
    assert torch.equal(ours_sampled, theirs_sampled)


def test_their_vqgan_decodes_and_encodes_the_same(release) -> None:
    models, _, vq = release
    tokenizer = vqgan.load_model(store_for(models))
    assert tokenizer.factor == 4 and tokenizer.codebook.shape == (CODES, Z)
    tokens = torch.randint(0, CODES, (2, 64), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z = vq.quantizer.embedding(tokens.view(2, 8, 8)).permute(0, 3, 1, 2)  # [2, Z, 8, 8]
        theirs = (vq.decoder(z) * 0.5 + 0.5).clamp(0, 1)  # their mean = std = 0.5
        ours = decode_tokens(tokenizer, tokens, 8, 8)  # [2, 3, 32, 32] in [0, 1]
    difference = float((theirs - ours).abs().max())
    print(f"CLIP-GEN VQGAN decode: max abs difference {difference:.3g}")
    assert difference < 1e-5

    pictures = ours
    with torch.no_grad():
        their_codes = vq.quantizer.encode(vq.encoder((pictures - 0.5) / 0.5)).flatten(1)
    assert torch.equal(encode_tokens(tokenizer, pictures), their_codes)


def test_cli_paints_with_their_checkpoints(release, tmp_path) -> None:
    models, _, _ = release
    out = tmp_path / "fox.png"
    argv = ["a red fox", "-o", str(out), "--models", str(models), "--generator", "clipgen"]
    assert main([*argv, "-q", "--seed", "3"]) == 0
    meta = read_png_metadata(out)
    assert meta["generator"] == "clipgen" and meta["size"] == "32x32"


def test_a_gpt_for_another_clip_is_refused_with_what_to_configure(release) -> None:
    models, _, _ = release
    models.write_text(models.read_text().replace('trained_with_clip = "imagine-tiny-clip"\n', ""))
    with pytest.raises(CheckpointError, match='model = "ViT-B-32" and pretrained = "openai"'):
        clipgen.load_model(store_for(models))


def test_their_vqgan_file_as_a_taming_checkpoint_says_which_format(release) -> None:
    models, _, _ = release
    models.write_text(models.read_text().replace('format = "clipgen-hfai"\n', ""))
    with pytest.raises(CheckpointError, match="vqgan_coco.pt"):
        vqgan.load_model(store_for(models))


def test_a_converted_model_saves_and_loads_in_our_format(release, tmp_path) -> None:
    """The untied head and exact GELU survive our model folder (save_model / load_model)."""
    models, _, _ = release
    model = clipgen_hfai.load_gpt(models.parent / "gpt_coco.pt")
    save_model(model, {"source": "HFAiLab/clip-gen"}, tmp_path / "saved")
    again, meta = load_model_dir(tmp_path / "saved", "cpu")
    cond = torch.randn(1, CLIP_DIM)
    tokens = torch.randint(0, CODES, (1, GRID * GRID))
    with torch.no_grad():
        assert torch.equal(model(cond, tokens), again(cond, tokens))
    assert again.config.activation == "gelu" and not again.config.tied_head
    assert meta["source"] == "HFAiLab/clip-gen"


def test_clipgen_can_be_conditioned_on_its_own_clip(release, tmp_path) -> None:
    """[generators.clipgen] clip: the CLIP the checkpoint needs, while [[clip]] (the other
    generators' perceptor) stays another model."""
    models, _, _ = release
    text = models.read_text().replace("seed = 0\n", "seed = 5\n", 1)  # the first [[clip]]
    tiny_clip = CONFIG_DIR / "imagine-tiny-clip.json"
    models.write_text(
        text + f'clip = {{ model = "imagine-tiny-clip", config = "{tiny_clip}", seed = 0 }}\n'
    )
    store = store_for(models)
    chosen = clipgen.settings(store)
    own = clipgen.conditioning_perceptor(store, chosen)
    assert own is not store.perceptor() and own is clipgen.conditioning_perceptor(store, chosen)
    embeddings = [p.encode_text(["a fox"])[0] for p in (own, store.perceptor())]
    assert not torch.allclose(*embeddings)
    out = tmp_path / "fox.png"
    argv = ["a fox", "-o", str(out), "--models", str(models), "--generator", "clipgen", "-q"]
    assert main(argv) == 0
