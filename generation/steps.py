"""Generators in step form: many jobs advance together in one batched step.

Continuous batching, as LLM servers do it for tokens: a worker keeps a batch of running jobs,
steps them all in one forward and backward pass, lets a finished or cancelled job leave and the
next queued one join at the next step. A generator that supports it has, besides ``run``:

    batch_key(request, store) -> Hashable       jobs with equal keys may share a step (same
                                                generator, model and size)
    start(request, store, control) -> state     the job's own state: its prompts' embeddings,
                                                parameters, optimiser, torch.Generator, ...
    step(states, store, shared) -> None         ONE step for each state, batched; reports each
                                                job's progress through its own ``control``
    finish(state, store) -> GenerationResult

A state has ``request``, ``control``, ``generator`` (its torch.Generator: every random draw of
the job comes from it), ``steps_done`` and ``total``; it is finished when ``steps_done >=
total``. ``shared`` is a dict the batch keeps from step to step for what its members share (a
KV cache); a generator must cope with it being emptied at any step. A step may leave a state
unchanged (it waits for the others: clipgen's candidates start in lockstep).

The math of a batched step is the per-job steps': each job's loss depends on its own
parameters alone and the losses are summed, so each job gets its own gradient, and its own
optimiser steps its own parameters. The same seed gives the same picture alone or in any batch
(up to float rounding of the batched kernels; tests/generation/test_batching.py measures it).

``run_alone`` is every step-form generator's ``run``: one job, a batch of one.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from types import ModuleType
from typing import Any

import torch

from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl

log = logging.getLogger(__name__)


def has_step_form(module: ModuleType) -> bool:
    return all(callable(getattr(module, name, None)) for name in ("batch_key", "start", "step"))


def run_alone(
    module: ModuleType, request: GenerationRequest, store: ModelStore, control: RunControl
) -> GenerationResult:
    """Run one job to the end in step form (the generator's ``run``)."""
    state = module.start(request, store, control)
    shared: dict[str, Any] = {}
    while state.steps_done < state.total:
        # Stop here if the caller cancelled (within one step), after its short calls.
        control.check(state.steps_done)
        module.step([state], store, shared)
    return module.finish(state, store)


class StepBatch:
    """The running jobs of one batch key (one generator and size), stepped together.

    ``step()`` runs one batched step. When it raises (a job's bad input found late, out of
    memory at this batch size) nobody is blamed yet: every member's random state is put back
    and each member is stepped alone, so only the jobs that also fail alone leave the batch
    (with their error); the others have taken their step, exactly as they would have alone."""

    def __init__(self, module: ModuleType, store: ModelStore, key: Hashable) -> None:
        self.module = module
        self.store = store
        self.key = key
        self.members: list[Any] = []
        self._shared: dict[str, Any] = {}

    def add(self, state: Any) -> None:
        self.members.append(state)

    def remove(self, state: Any) -> None:
        self.members = [m for m in self.members if m is not state]

    def finished(self) -> list[Any]:
        return [m for m in self.members if m.steps_done >= m.total]

    def step(self) -> list[tuple[Any, BaseException]]:
        """One step for every member; returns the members that failed (already removed)."""
        members = list(self.members)
        if not members:
            return []
        before = [(m.steps_done, m.generator.get_state()) for m in members]
        try:
            self.module.step(members, self.store, self._shared)
            return []
        except Exception as error:  # noqa: BLE001 - isolated below
            if len(members) == 1:
                self.remove(members[0])
                self._shared.clear()
                return [(members[0], error)]
            log.warning(
                "a batched step of %d jobs failed (%s: %s); stepping them one by one",
                len(members),
                type(error).__name__,
                error,
            )
            # Only the kind is kept: the exception's traceback holds the failed step's tensors.
            out_of_memory = isinstance(error, torch.cuda.OutOfMemoryError)
        self._shared.clear()
        if out_of_memory and torch.cuda.is_available():
            torch.cuda.empty_cache()
        failed: list[tuple[Any, BaseException]] = []
        for member, (steps_done, rng) in zip(members, before, strict=True):
            if member.steps_done != steps_done:
                continue  # it took its step before the failure
            member.generator.set_state(rng)  # draw again what the failed step drew
            try:
                self.module.step([member], self.store, self._shared)
            except Exception as alone:  # noqa: BLE001 - this job's own failure
                failed.append((member, alone))
                self.remove(member)
            # The next member (and the next batched step) builds its shared parts afresh.
            self._shared.clear()
        return failed
