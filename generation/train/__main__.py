"""python -m generation.train <command> [options]

Commands:
    clipgen   train a CLIP-GEN text-to-image model from a folder of images (no captions)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = ("clipgen",)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    if args[0] == "clipgen":
        from generation.train.clipgen import main as clipgen_main

        return clipgen_main(args[1:])
    print(
        f"error: unknown command {args[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
