"""The CLIP loss that every generator shares.

A ``ClipGuide`` holds the prompt embeddings (text, image and noise prompts) for each perceptor
model, computed once per request. ``loss(image)`` cuts the image into augmented cutouts at each
model's input size, embeds them, and measures the spherical distance to every prompt:

    loss = sum over models m of  w_m / sum(w) * sum over prompts p of |w_p| * mean over cutouts of
           max(sign(w_p) * d(cutout, p), stop_p)
    d(a, b) = 2 * arcsin(|a - b| / 2) ** 2          (squared great-circle distance)

A negative weight pushes the image away from its prompt; a stop is a floor below which a part
stops pulling. With an init image and init_weight > 0, an MSE term keeps pulling toward it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from generation.cutouts import Cutouts
from generation.images import load_image, pil_to_tensor
from generation.perceptor import Perceptor, resize
from generation.prompts import parse_image_prompt, parse_prompts
from generation.request import GenerationRequest


@dataclass
class Targets:
    """The prompts as one model sees them."""

    embeds: torch.Tensor  # [P, D], L2-normalised
    weights: torch.Tensor  # [P]
    stops: torch.Tensor  # [P]


class ClipGuide:
    def __init__(
        self,
        perceptor: Perceptor,
        targets: list[Targets],
        cutouts: Cutouts,
        generator: torch.Generator,
        *,
        positive_text: list[torch.Tensor] | None = None,
        positive_weights: torch.Tensor | None = None,
        init_image: torch.Tensor | None = None,
        init_weight: float = 0.0,
    ) -> None:
        self.perceptor = perceptor
        self.targets = targets
        self.cutouts = cutouts
        self.generator = generator
        self._positive_text = positive_text  # per model [Q, D]
        self._positive_weights = positive_weights  # [Q]
        self.init_image = init_image  # [1, 3, H, W] or None
        self.init_weight = init_weight
        total = sum(m.weight for m in perceptor.models)
        self._model_weights = [m.weight / total for m in perceptor.models]

    @classmethod
    def from_request(
        cls,
        request: GenerationRequest,
        perceptor: Perceptor,
        generator: torch.Generator,
        *,
        cutouts: Cutouts | None = None,
    ) -> ClipGuide:
        """Embed the request's text, image and noise prompts once, for every model."""
        device = perceptor.device
        prompts = parse_prompts(request.prompt)
        text_embeds = perceptor.encode_text([p.text for p in prompts])  # per model [P, D]
        embeds = [[e] for e in text_embeds]
        weights = [p.weight for p in prompts]
        stops = [p.stop for p in prompts]

        for spec in request.image_prompts:
            image_prompt = parse_image_prompt(spec)
            pixels = pil_to_tensor(load_image(image_prompt.path)).to(device)  # [1, 3, H, W]
            with torch.no_grad():
                for per_model, e in zip(embeds, _embed_centre(perceptor, pixels), strict=True):
                    per_model.append(e)
            weights.append(image_prompt.weight)
            stops.append(image_prompt.stop)

        for seed, weight in request.noise_prompts:
            noise = torch.Generator().manual_seed(int(seed))
            for per_model, m_embed in zip(embeds, text_embeds, strict=True):
                dim = m_embed.shape[-1]
                random = torch.randn(1, dim, generator=noise)  # [1, D]
                per_model.append(F.normalize(random, dim=-1).to(device))
            weights.append(float(weight))
            stops.append(-math.inf)

        targets = [
            Targets(
                embeds=torch.cat(per_model),
                weights=torch.tensor(weights, device=device),
                stops=torch.tensor(stops, device=device),
            )
            for per_model in embeds
        ]
        positive = [i for i, p in enumerate(prompts) if p.weight > 0]
        init = None
        if request.init_image and request.init_weight > 0:
            init = pil_to_tensor(
                load_image(request.init_image), (request.width, request.height)
            ).to(device)
        return cls(
            perceptor,
            targets,
            cutouts or Cutouts(request.cutn, request.cut_pow),
            generator,
            positive_text=[e[positive] for e in text_embeds] if positive else None,
            positive_weights=torch.tensor([prompts[i].weight for i in positive], device=device)
            if positive
            else None,
            init_image=init,
            init_weight=request.init_weight,
        )

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        """image [1, 3, H, W] in [0, 1] -> scalar loss (differentiable w.r.t. the image)."""
        return batched_losses([self], image)[0]

    @torch.no_grad()
    def similarity(self, image: torch.Tensor) -> float:
        """Cosine similarity of the whole, un-augmented image to the positive text prompts
        (weighted mean), as the first model sees it. 0.0 when no text prompt is positive."""
        if self._positive_text is None or self._positive_weights is None:
            return 0.0
        embed = self.perceptor.embed(0, resize(image, self.perceptor.models[0].input_size))
        cosines = (embed @ self._positive_text[0].T)[0]  # [Q]
        weights = self._positive_weights
        return float((cosines * weights).sum() / weights.sum())


def batched_losses(guides: Sequence[ClipGuide], images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] in [0, 1], row i painted for ``guides[i]`` -> losses [B].

    Several jobs in one pass: each job's cutouts come from its own guide and generator (so they
    are the ones it would draw alone), then ONE CLIP forward per model embeds every job's
    cutouts together, and each job's embeddings are scored against its own prompts. Loss i
    depends on image i alone, so the gradient of ``losses.sum()`` is each job's own gradient.
    Every guide must share one perceptor (one model store)."""
    perceptor = guides[0].perceptor
    totals = [images.new_zeros(()) for _ in guides]
    for index, (model, share) in enumerate(
        zip(perceptor.models, guides[0]._model_weights, strict=True)
    ):
        if share == 0:
            continue
        cuts = [
            guide.cutouts(images[i : i + 1], model.input_size, guide.generator)
            for i, guide in enumerate(guides)
        ]  # per job [cutn_i, 3, s, s]
        embeds = perceptor.embed(index, torch.cat(cuts))  # [sum cutn_i, D]
        for i, (guide, job_embeds) in enumerate(
            zip(guides, embeds.split([c.shape[0] for c in cuts]), strict=True)
        ):
            totals[i] = totals[i] + share * prompt_loss(job_embeds, guide.targets[index])
    for i, guide in enumerate(guides):
        if guide.init_image is not None and guide.init_weight > 0:
            totals[i] = totals[i] + guide.init_weight * F.mse_loss(
                images[i : i + 1], guide.init_image
            )
    return torch.stack(totals)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [N, D], b [P, D], both L2-normalised -> [N, P] squared great-circle distances."""
    chord = (a[:, None, :] - b[None, :, :]).norm(dim=-1)  # [N, P]
    return (chord / 2).clamp(max=1).arcsin().pow(2).mul(2)


def prompt_loss(embeds: torch.Tensor, targets: Targets) -> torch.Tensor:
    """embeds [N, D] of cutouts -> scalar: weighted, stopped distance to every prompt."""
    distances = spherical_distance(embeds, targets.embeds)  # [N, P]
    signed = distances * targets.weights.sign()
    # Below its stop a part contributes a constant: no gradient, it stops pulling.
    stopped = torch.maximum(signed, targets.stops)
    return (stopped.mean(dim=0) * targets.weights.abs()).sum()


def _embed_centre(perceptor: Perceptor, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The centre square of an image [1, 3, H, W] embedded by every model: [1, D] each."""
    _, _, height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return perceptor.encode_image(pixels[:, :, top : top + side, left : left + side])


@torch.no_grad()
def text_similarity(perceptor: Perceptor, image: torch.Tensor, texts: list[str]) -> list[float]:
    """Cosine similarity of an image [1, 3, H, W] to each text, by the first model."""
    image_embed = perceptor.encode_image(image)[0]  # [1, D]
    text_embeds = perceptor.encode_text(texts)[0]  # [T, D]
    return (image_embed @ text_embeds.T)[0].tolist()
