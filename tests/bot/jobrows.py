"""Helpers shared by the bot tests: job rows without a database."""

from __future__ import annotations

from typing import Any

from db import Job


def make_job(**changes: Any) -> Job:
    """A plausible ``db.Job`` row; pass fields to change."""
    values: dict[str, Any] = dict(
        id=7,
        kind="imagine",
        parent_job_id=None,
        user_id=1001,
        guild_id=2002,
        channel_id=3003,
        status="queued",
        prompt="a lighthouse in a storm, oil painting",
        seed=42,
        steps=250,
        width=256,
        height=256,
        generator="vqgan",
        cutn=32,
        cut_pow=1.0,
        learning_rate=None,
        optimizer="adam",
        init_image=None,
        init_weight=0.0,
        image_prompts=(),
        noise_prompts=(),
        guidance_scale=None,
        skip_steps=0,
        extra={},
        created_at=1000.0,
        started_at=None,
        finished_at=None,
        attempts=0,
        error=None,
        output_path=None,
        clip_score=None,
        cancelled_by=None,
        last_step=0,
        total_steps=None,
        progress_at=None,
        interaction_id=None,
        interaction_token=None,
        token_expires_at=None,
        application_id=None,
        reply_message_id=None,
        channel_message_id=None,
    )
    values.update(changes)
    return Job(**values)
