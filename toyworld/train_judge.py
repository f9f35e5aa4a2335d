"""Train the judge's shape CNN on our own renders, print and store its validation accuracy.

    python -m toyworld.train_judge            # writes toyworld/artifacts/judge_shape_cnn.safetensors
                                              # and judge_metrics.json

The CNN reads the mask the judge itself extracts (``judge.read_scene``), so it learns exactly
what it will be shown. Half the training pictures are degraded first (pixel noise, a slight
blur), as generated pictures are, so that a ragged blob is still read. Training renders are data
seed 3, validation seed 4 (benchmarks use other seeds).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from toyworld import ARTIFACTS
from toyworld.judge import SHAPE_WEIGHTS, ShapeNet, read_scene
from toyworld.render import SHAPES, render

TRAIN_SEED, VAL_SEED = 3, 4


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A render as a generator might paint it: blurred a little, with pixel noise."""
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
    noisy = np.asarray(blurred, dtype=np.float64) + rng.normal(0, rng.uniform(0, 20), image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def masks_and_labels(
    seed: int, n: int, degraded: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob masks [N, 1, 32, 32] and shape ids [N] of renders 0..n-1 of a seed."""
    masks, labels = [], []
    for i in range(n):
        image, scene, _ = render(seed, i)
        if rng.random() < degraded:
            image = degrade(image, rng)
        masks.append(read_scene(image)["blob"])
        labels.append(SHAPES.index(scene.shape))
    return torch.from_numpy(np.stack(masks)).float()[:, None], torch.tensor(labels)


@torch.no_grad()
def accuracy(net: ShapeNet, masks: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    return float((net(masks).argmax(-1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=12000)
    parser.add_argument("--n-val", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    x_train, y_train = masks_and_labels(TRAIN_SEED, args.n_train, 0.5, rng)
    x_val, y_val = masks_and_labels(VAL_SEED, args.n_val, 0.0, rng)
    x_val_noisy, y_val_noisy = masks_and_labels(VAL_SEED, args.n_val, 1.0, rng)
    print(
        f"masks of {args.n_train} + 2x{args.n_val} renders in {time.perf_counter() - started:.0f} s"
    )

    net = ShapeNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (args.n_train // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    step = 0
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(args.n_train)
        for start in range(0, args.n_train - args.batch_size + 1, args.batch_size):
            batch = order[start : start + args.batch_size]
            # Random flips keep the CNN from learning where the renderer puts things.
            masks = x_train[batch]  # [B, 1, 32, 32]
            if torch.rand(()) < 0.5:
                masks = masks.flip(-1)
            loss = F.cross_entropy(net(masks), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, val accuracy "
              f"{accuracy(net, x_val, y_val):.4f}", flush=True)  # fmt: skip

    metrics = {
        "train_seed": TRAIN_SEED,
        "val_seed": VAL_SEED,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "val_accuracy_clean": accuracy(net, x_val, y_val),
        "val_accuracy_degraded": accuracy(net, x_val_noisy, y_val_noisy),
        "seconds": round(time.perf_counter() - started, 1),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(SHAPE_WEIGHTS))
    (ARTIFACTS / "judge_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"shape CNN validation accuracy (seed {VAL_SEED}, {args.n_val} renders): clean "
        f"{metrics['val_accuracy_clean']:.4f}, degraded {metrics['val_accuracy_degraded']:.4f}; "
        f"wrote {SHAPE_WEIGHTS}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
