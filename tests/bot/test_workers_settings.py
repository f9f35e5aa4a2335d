"""Choosing the workers: IMAGINE_WORKERS and the Ray settings, the per-job time limit, and the
one-line error when the ray extra is missing."""

from __future__ import annotations

import importlib.util

import pytest

from bot.__main__ import main, make_workers
from bot.settings import SettingsError, load_settings
from generation.worker import GpuWorker

BASE = {"DISCORD_TOKEN": "x" * 20}


def test_defaults_are_the_local_worker_with_a_time_limit() -> None:
    settings = load_settings(BASE)
    assert (settings.workers, settings.ray_workers, settings.ray_gpus) == ("local", 1, 1.0)
    assert settings.ray_address is None and settings.job_timeout == 3600.0
    worker = make_workers(settings)
    assert isinstance(worker, GpuWorker) and worker.job_timeout == 3600.0


def test_ray_settings_are_read_from_the_environment() -> None:
    pytest.importorskip("ray")
    env = BASE | {
        "IMAGINE_WORKERS": "ray",
        "IMAGINE_RAY_ADDRESS": "auto",
        "IMAGINE_RAY_WORKERS": "3",
        "IMAGINE_RAY_GPUS": "0",
        "IMAGINE_JOB_TIMEOUT": "600",
        "IMAGINE_RANK_PER_MINUTE": "2",
    }
    settings = load_settings(env)
    assert (settings.workers, settings.ray_address, settings.ray_workers) == ("ray", "auto", 3)
    assert (settings.ray_gpus, settings.job_timeout, settings.rank_per_minute) == (0.0, 600.0, 2)
    from generation.ray_pool import RayPool

    pool = make_workers(settings)  # built, not started: no cluster is contacted
    assert isinstance(pool, RayPool) and pool.capacity == 3 and pool.job_timeout == 600.0


def test_batch_size_sets_how_many_jobs_a_painter_paints_at_once() -> None:
    assert load_settings(BASE).batch_size == 0  # 4 on a GPU, 1 on a CPU: the worker decides
    worker = make_workers(load_settings(BASE | {"IMAGINE_BATCH_SIZE": "3"}))
    assert isinstance(worker, GpuWorker) and worker.capacity == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IMAGINE_BATCH_SIZE", "-1", "batch_size"),
        ("IMAGINE_WORKERS", "gpu", "must be local or ray"),
        ("IMAGINE_RAY_WORKERS", "0", "ray_workers"),
        ("IMAGINE_RAY_GPUS", "-1", "ray_gpus"),
        ("IMAGINE_JOB_TIMEOUT", "0", "job_timeout"),
        ("IMAGINE_RANK_PER_MINUTE", "0", "rank_per_minute"),
    ],
)
def test_bad_worker_settings_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(BASE | {name: value})


def test_ray_without_the_extra_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_ray(name: str, *args: object) -> object:
        return None if name == "ray" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_ray)
    for key in [k for k in __import__("os").environ if k.startswith(("IMAGINE_", "DISCORD_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DISCORD_TOKEN", "x" * 20)
    monkeypatch.setenv("IMAGINE_WORKERS", "ray")
    assert main() == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "pip install -e '.[ray]'" in err and "IMAGINE_WORKERS=ray" in err
