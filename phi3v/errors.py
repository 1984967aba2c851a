"""The one exception type for mistakes a user can fix (bad config, bad data, bad paths)."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A problem in the user's input. The message names the culprit and says how to fix it.

    Entry points (`@entry_point`) print the message alone (no traceback) and exit with status 2.
    """


def entry_point(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a command line's `main`: its exit status (None: 0), or 2 after printing a UserError."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run
