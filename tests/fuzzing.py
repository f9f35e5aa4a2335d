"""Shared settings of the fuzz properties (tests/*/test_fuzz_*.py, issue 19 item 3).

The default test run tries a few dozen inputs per property, derandomized so that CI sees the
same inputs every time. ``IMAGINE_FUZZ_EXAMPLES=N`` asks for N per property (and random ones:
a long run should explore), and ``IMAGINE_FUZZ_TALLY=FILE`` appends one line per input tried,
``<kind> <outcome>``, which ``benchmarks/fuzz.py`` counts and prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 25


def fuzz_settings(default: int = DEFAULT_EXAMPLES) -> settings:
    """Bounded, reproducible hypothesis settings for one property. The bot's properties share
    one running bot across examples on purpose (it must keep answering), hence the
    function-scoped fixture health check is off."""
    wanted = os.environ.get("IMAGINE_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(wanted) if wanted else default,
        deadline=None,
        derandomize=not wanted,
        database=None,  # no .hypothesis folder written into the checkout
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
    )


def tally(kind: str, outcome: str) -> None:
    """Record one input tried (for benchmarks/fuzz.py); nothing unless IMAGINE_FUZZ_TALLY."""
    path = os.environ.get("IMAGINE_FUZZ_TALLY")
    if path:
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(f"{kind} {outcome}\n")


def files_under(folder: Path, *, skip: tuple[Path, ...] = ()) -> set[Path]:
    """Every file below ``folder`` except those below one of ``skip``."""
    return {
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(p == s or s in p.parents for s in skip)
    }
