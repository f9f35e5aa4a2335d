"""Bad input tried (issue 19 item 3): runs the fuzz properties of tests/bot/test_fuzz_commands.py
and tests/generation/test_fuzz_checkpoints.py with many random examples and prints how many
inputs of each kind were tried, refused, and (where valid) accepted.

    python benchmarks/fuzz.py [--examples N]

Loopback only (the fake Discord); a failing property prints hypothesis' smallest failing input
and exits non-zero.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["tests/bot/test_fuzz_commands.py", "tests/generation/test_fuzz_checkpoints.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="inputs per property")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tally = Path(folder) / "tally"
        env = dict(
            os.environ, IMAGINE_FUZZ_EXAMPLES=str(args.examples), IMAGINE_FUZZ_TALLY=str(tally)
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--timeout",
                "3000",
                *FILES,
            ],
            cwd=REPO,
            env=env,
        )
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        if tally.exists():
            for line in tally.read_text().splitlines():
                kind, outcome = line.split(" ", 1)
                counts[(kind, outcome)] += 1
    kinds = sorted({k for k, _ in counts})
    print(f"\nbad inputs tried ({args.examples} per property; pytest exit {done.returncode})")
    print(f"{'kind':28} {'tried':>7} {'refused':>8} {'accepted':>9}")
    for kind in kinds:
        refused = counts[(kind, "refused")]
        accepted = sum(n for (k, o), n in counts.items() if k == kind and o != "refused")
        print(f"{kind:28} {refused + accepted:7d} {refused:8d} {accepted:9d}")
    total = sum(counts.values())
    print(f"{'total':28} {total:7d} {sum(n for (k, o), n in counts.items() if o == 'refused'):8d}")
    print("crashes: 0" if done.returncode == 0 else "a property failed: see above")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
