"""An object that pickles may build, call, fill and append to, and that does nothing: what both
of the project's restricted unpicklers (the checkpoint reader and the download probe) make of
a global they do not allow. It imports nothing, so the probe stays free of torch."""

from __future__ import annotations

from typing import Any


class Skipped:
    """Stands in for any object the allow-list does not cover (Lightning callbacks, optimiser
    states, numpy scalars, ...). Whatever the file asks for, it records nothing and does
    nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Skipped:
        return Skipped()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass
