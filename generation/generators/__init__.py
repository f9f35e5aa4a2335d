"""The registry of generators: name -> module. Each module is one self-contained file with

    NAME: str
    DEFAULT_LR: float                        (generators that optimise)
    check(request, store) -> None            generator-specific validation (BadRequest, ...)
    run(request, store, control) -> GenerationResult
    load_model(store) -> model               (generators with weights) loads them into the
                                             store's cache; the bot preloads through it

Modules are imported on first use, so a generator whose dependencies are heavy costs nothing
until someone asks for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from generation.errors import BadRequest

GENERATORS: dict[str, str] = {
    "vqgan": "generation.generators.vqgan",
    "diffusion": "generation.generators.diffusion",
    "latent_diffusion": "generation.generators.latent_diffusion",
    "pixels": "generation.generators.pixels",
    "fourier": "generation.generators.fourier",
    "siren": "generation.generators.siren",
    "clipgen": "generation.generators.clipgen",
    "dvae": "generation.generators.dvae",
    "biggan": "generation.generators.biggan",
}


def register(name: str, module: str) -> None:
    """Add a generator (used by tests and plug-ins; the built-ins are listed above)."""
    GENERATORS[name] = module


def generator_names() -> tuple[str, ...]:
    return tuple(GENERATORS)


def get_generator(name: str) -> ModuleType:
    try:
        module_path = GENERATORS[name]
    except KeyError:
        raise BadRequest(
            f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}"
        ) from None
    return importlib.import_module(module_path)
