"""Train the toy VQGAN: taming's architecture (the project's ``VQGAN``), factor 4, 256 codes of 32.

    python -m toyworld.train_vqgan           # writes toyworld/artifacts/vqgan/

The model is built from our own taming model.yaml by ``generation.generators.vqgan`` (taming's
Encoder, Decoder and quantiser in the module the project loads), trained on renders of data seed
0 with an L1 + squared reconstruction loss and VQ-VAE's codebook and commitment terms (no GAN or
perceptual loss: the world is flat colours), and saved in taming's format: the yaml plus a .ckpt
holding ``{"state_dict": ...}`` with taming's key names. Codes nobody used since the last check
are moved onto random encoder outputs, so all 256 stay alive. Held-out PSNR is on seed 1.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from generation.generators.vqgan import VQGAN, build_from_yaml
from toyworld import ARTIFACTS
from toyworld.render import render_many

OUT = ARTIFACTS / "vqgan"
TRAIN_SEED, EVAL_SEED = 0, 1
CONFIG = {
    "model": {
        "base_learning_rate": 1e-3,
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 32,
            "n_embed": 256,
            "ddconfig": {
                "double_z": False,
                "z_channels": 32,
                "resolution": 32,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 32,
                "ch_mult": [1, 1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
            },  # fmt: skip
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
        },
    }
}
BETA = 0.25  # commitment weight, as taming's VectorQuantizer2


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float [N, 3, 32, 32] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def forward(model: VQGAN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images [B, 3, 32, 32] in [0, 1] -> (reconstruction in [-1, 1], VQ loss, codes [B, 8, 8])."""
    h = model.quant_conv(model.encoder(images * 2 - 1))  # [B, 32, 8, 8]
    flat = h.movedim(1, -1)  # [B, 8, 8, 32]
    codebook = model.codebook  # [256, 32]
    codes = torch.cdist(flat.reshape(-1, flat.shape[-1]), codebook).argmin(-1).view(flat.shape[:-1])
    snapped = codebook[codes]  # [B, 8, 8, 32]
    vq_loss = F.mse_loss(snapped, flat.detach()) + BETA * F.mse_loss(flat, snapped.detach())
    straight = (flat + (snapped - flat).detach()).movedim(-1, 1)  # [B, 32, 8, 8]
    return model.decode(straight), vq_loss, codes


@torch.no_grad()
def psnr(model: VQGAN, n: int) -> float:
    """Mean PSNR (dB, pixels in [0, 1]) of encode -> decode over n renders of EVAL_SEED, through
    the project's own encode/decode."""
    model.eval()
    images, _ = render_many(EVAL_SEED, 0, n)
    scores = []
    for start in range(0, n, 200):
        x = to_tensor(images[start : start + 200])  # [b, 3, 32, 32]
        y = ((model.decode(model.encode(x)) + 1) / 2).clamp(0, 1)
        mse = (x - y).pow(2).flatten(1).mean(-1).clamp_min(1e-10)  # [b]
        scores.append(-10 * torch.log10(mse))
    return float(torch.cat(scores).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / "toy_vqgan.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    model = build_from_yaml(config_path, seed=0)
    torch.nn.init.uniform_(model.codebook, -0.1, 0.1)
    pictures = to_tensor(render_many(TRAIN_SEED, 0, args.n_train)[0])  # [N, 3, 32, 32]
    draws = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.steps, pct_start=0.05
    )
    used = torch.zeros(model.codebook.shape[0], dtype=torch.bool)
    for step in range(1, args.steps + 1):
        model.train()
        x = pictures[torch.randint(len(pictures), (args.batch_size,), generator=draws)]
        if torch.rand((), generator=draws) < 0.5:
            x = x.flip(-1)
        y, vq_loss, codes = forward(model, x)
        target = x * 2 - 1
        loss = F.l1_loss(y, target) + F.mse_loss(y, target) + vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        used[codes.unique()] = True
        if step % 100 == 0 and step <= args.steps * 0.8:
            # Restart dead codes on encoder outputs of this batch (plus a little noise).
            dead = torch.nonzero(~used).flatten()
            if len(dead):
                with torch.no_grad():
                    h = model.quant_conv(model.encoder(x * 2 - 1)).movedim(1, -1).reshape(-1, 32)
                    pick = torch.randint(len(h), (len(dead),), generator=draws)
                    model.codebook[dead] = h[pick] + 0.01 * torch.randn(len(dead), 32)
            used.zero_()
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)  # fmt: skip

    figure = psnr(model, args.n_eval)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, args.out / "toy_vqgan.ckpt")
    metrics = {
        "train_seed": TRAIN_SEED, "eval_seed": EVAL_SEED, "steps": args.steps,
        "heldout_psnr_db": round(figure, 2), "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"toy VQGAN held-out PSNR on {args.n_eval} renders (seed {EVAL_SEED}): {figure:.2f} dB; "
        f"wrote {args.out}"
    )
    return 0 if math.isfinite(figure) else 1


if __name__ == "__main__":
    raise SystemExit(main())
