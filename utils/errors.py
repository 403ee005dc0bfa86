"""The one exception type for problems a user can cause, the script entry wrapper, and the
way one-line messages list many items."""
from __future__ import annotations

import sys
from typing import Callable, Iterable, Sequence


class InputError(Exception):
    """Bad user input (missing file, malformed fold, ...). The message is one line
    saying which file or entry is wrong and what to do about it."""


def short_list(items: Iterable[object], limit: int = 5) -> str:
    """``"a, b, c and 4 more"``: the first ``limit`` items of a one-line message."""
    items = [str(item) for item in items]
    head = ", ".join(items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


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
