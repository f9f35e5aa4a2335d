"""Opening the model store for a long-running server: check the device, say in the log which one
is used, and load CLIP and every allowed generator's models before the first job, so that no
job and no moderation check waits behind a first-use download on the GPU thread.

``open_store`` has the signature of GpuWorker's ``store_factory`` (models spec, device) plus
keyword options; the bot passes it with ``functools.partial``. It runs on the worker's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from generation.generators import get_generator
from generation.models import (
    ModelsConfig,
    ModelStore,
    describe_device,
    require_gpu_for_real_models,
)

log = logging.getLogger(__name__)


def open_store(
    models_spec: str | None, device: str | None, *, generators: Sequence[str] = ()
) -> ModelStore:
    """A store for ``models_spec`` on ``device`` (None: CUDA if usable), with CLIP and the
    models of ``generators`` loaded. Raises BadRequest, before loading anything, when real
    models would run on a CPU nobody asked for."""
    config = ModelsConfig.load(models_spec)
    store = ModelStore(config, device)
    require_gpu_for_real_models(config, device, store.device)
    log.info("device: %s", describe_device(store.device))
    preload(store, generators)
    return store


def preload(store: ModelStore, generators: Sequence[str]) -> None:
    """Load CLIP, then each generator's models (through its ``load_model(store)``;
    generators without one need nothing beyond CLIP), logging each step."""
    started = time.perf_counter()
    log.info("loading CLIP: %s", store.describe())
    store.perceptor()
    log.info("loaded CLIP in %.1f s", time.perf_counter() - started)
    with_weights = 0
    for number, name in enumerate(generators, 1):
        module = get_generator(name)
        load = getattr(module, "load_model", None)
        if load is None:
            log.info("generator %s (%d of %d) needs only CLIP", name, number, len(generators))
            continue
        with_weights += 1
        log.info("loading generator %s (%d of %d)", name, number, len(generators))
        begun = time.perf_counter()
        load(store)
        log.info("loaded generator %s in %.1f s", name, time.perf_counter() - begun)
    if with_weights > store.config.max_resident:
        log.warning(
            "%d allowed generators have models but max_resident in %s is %d: the least "
            "recently used are unloaded and load again (on the GPU thread) when asked for; "
            "raise max_resident if the GPU has room",
            with_weights,
            store.config.source,
            store.config.max_resident,
        )
    log.info("models ready in %.1f s", time.perf_counter() - started)
