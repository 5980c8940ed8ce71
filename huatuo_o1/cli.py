"""The end of every script: run main(), and turn bad input into one line on stderr instead of a traceback."""

import sys
from collections.abc import Callable

from huatuo_o1.records import InputError


def run(main: Callable[[], object]) -> None:
    """Call main(); an InputError (bad input a user must fix, its message names the file, the row and the fix)
    exits with status 1 and "error: <message>"; an int that main returns is the exit status."""
    try:
        result = main()
    except InputError as error:
        sys.exit(f"error: {error}")
    if isinstance(result, int) and not isinstance(result, bool):
        sys.exit(result)
