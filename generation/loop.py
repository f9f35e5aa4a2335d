"""Small pieces every optimisation loop uses: seeded generators, optimisers, a clamp that keeps
its gradient, and progress reporting."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

from generation.errors import BadRequest
from generation.images import tensor_to_pil
from generation.request import GenerationRequest, Progress, RunControl


def torch_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded from the request: randomness without global state."""
    return torch.Generator(device=device).manual_seed(int(seed))


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    raise BadRequest(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


class _ClampWithGrad(torch.autograd.Function):
    """Clamp in the forward pass; in the backward pass let through the part of the gradient
    that moves a value back toward the range. A plain clamp would zero the gradient of every
    saturated pixel, and saturated regions would never recover."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # A descent step moves x by -grad: keep the gradient unless that leaves the range.
        outside = ((x < ctx.low) & (grad > 0)) | ((x > ctx.high) & (grad < 0))
        return grad * ~outside, None, None


def clamp_with_grad(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return _ClampWithGrad.apply(x, low, high)


def report(
    control: RunControl,
    request: GenerationRequest,
    step: int,
    loss: float | torch.Tensor,
    image: torch.Tensor,
    started: float,
    *,
    total: int | None = None,
) -> None:
    """Hand a Progress to the caller if this step is one it wants (``step`` is 1-based).

    ``total`` is the run's step count when it differs from ``request.steps`` (diffusion with
    skip steps runs ``steps - skip_steps``). ``loss`` may be a detached 0-d tensor: reading it
    waits for the GPU, so it is read only on the steps that report."""
    total = request.steps if total is None else total
    if control.on_progress is not None and control.wants_progress(
        step, total, request.progress_every
    ):
        control.on_progress(
            Progress(
                step=step,
                total=total,
                loss=float(loss),
                image=tensor_to_pil(image),
                elapsed=time.perf_counter() - started,
            )
        )
