"""The one exception type for problems a user can cause, and the script entry wrapper."""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class InputError(Exception):
    """Bad user input (missing file, malformed fold, ...). The message is one line
    saying which file or entry is wrong and what to do about it."""


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)``; an :class:`InputError` is printed as one line and exits 2."""
    try:
        main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: checkpoints written so far are kept; rerun with --resume to continue",
              file=sys.stderr)
        sys.exit(130)
