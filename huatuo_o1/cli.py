"""How every script starts and ends: flags parsed with one-line errors, bad input as one line, Ctrl-C as one line.

- run(main): the last line of every script. Bad input (InputError) -> "error: <message>", exit 1; Ctrl-C ->
  "interrupted: <what was kept>", exit 130; anything else -> one line naming the exception, exit 1.
  `--debug` anywhere on the command line (or HUATUO_DEBUG=1 in the environment) shows the traceback too.
- parse(dataclasses, argv): HfArgumentParser, but an unknown flag or a bad value is one line (with the
  closest flag when there is one), exit 2, instead of a usage block or a traceback; flags are matched exactly,
  never by prefix (dataclass_parser; argument_parser for plain argparse scripts).
- check_ranges: the sizes, epochs and limits that make no sense (0 or negative) stop before anything loads.
- redact: an API key never shows in a message or a file, whatever a server echoed.
"""

import argparse
import difflib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import NoReturn

from huatuo_o1.records import InputError

DEBUG_FLAG, DEBUG_VARIABLE = "--debug", "HUATUO_DEBUG"


def debugging() -> bool:
    return DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


REDACTED = "[redacted]"


def redact(text: object, secret: str | None) -> str:
    """str(text) with every occurrence of secret (an API key) replaced by "[redacted]"; as it is without a secret.

    A marker no reply or error text holds by chance (unlike "***"), so a reader sees where something was removed.
    """
    text = str(text)
    return text.replace(secret, REDACTED) if secret else text


def one_line(text: object, limit: int = 1500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(main: Callable[[], object]) -> None:
    """Call main(); an int it returns is the exit status.

    InputError (bad input a user must fix; its message names the file, row or flag and the fix) exits
    with status 1 and "error: <message>"; KeyboardInterrupt with 130 and "interrupted: <its message>";
    any other exception with 1 and one line naming it. With --debug / HUATUO_DEBUG=1 the traceback
    is printed first.
    """
    debug = debugging()
    if DEBUG_FLAG in sys.argv[1:]:
        sys.argv = [sys.argv[0]] + [arg for arg in sys.argv[1:] if arg != DEBUG_FLAG]
    try:
        result = main()
    except InputError as error:
        if debug:
            traceback.print_exc()
        leave(f"error: {one_line(error)}")
    except KeyboardInterrupt as error:
        if debug:
            traceback.print_exc()
        print(f"interrupted: {one_line(error) or 'stopped by Ctrl-C'}", file=sys.stderr, flush=True)
        leave(130)
    except Exception as error:
        if debug:
            raise
        leave(f"error: {type(error).__name__}: {one_line(error)} (--debug or {DEBUG_VARIABLE}=1 shows the traceback)")
    status = result if isinstance(result, int) and not isinstance(result, bool) else 0
    if status or launched_processes() > 1:
        leave(status)


def launched_processes() -> int:
    """How many processes the launcher (accelerate / torchrun / deepspeed) started for this run; 1 when none."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def leave(status: int | str) -> NoReturn:
    """sys.exit(status) (a str is printed to stderr, status 1), but a process of a multi-process launch skips the
    interpreter's teardown. After a finished run its outputs are written and its process groups destroyed, yet
    DeepSpeed's ZeRO-3 parameters keep the gloo groups (and their threads) alive until that teardown, where a rank
    sometimes died with SIGABRT ("terminate called without an active exception"): exit status -6 for finished work.
    A rank that failed leaves the same way, its status and one line kept.
    """
    if launched_processes() <= 1:
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the reader anyway
            pass
    os._exit(status)


# ---- flags ------------------------------------------------------------------------------------


def _flags_of(parser) -> list[str]:
    return sorted(flag for flag in parser._option_string_actions if flag.startswith("--"))


def unknown_flags_message(parser, leftovers: Iterable[str]) -> str:
    """'unknown flag --lr (did you mean --learning_rate?)' for each flag argparse could not place."""
    leftovers = list(leftovers)
    flags = [word for word in leftovers if word.startswith("-")]
    if not flags:
        return f"unexpected value(s) {' '.join(leftovers)} (every value follows its --flag)"
    known, parts = _flags_of(parser), []
    for flag in flags:
        name = flag.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return f"unknown flag{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def one_line_errors(parser):
    """Make an argparse parser report a bad flag or value in one line ('error: ...', exit 2), not a usage block."""

    def error(message: str):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            message = unknown_flags_message(parser, message[len(prefix) :].split())
        print(f"error: {one_line(message)}; `{parser.prog} --help` lists the flags", file=sys.stderr, flush=True)
        sys.exit(2)

    parser.error = error
    if parser.epilog is None:
        parser.epilog = f"{DEBUG_FLAG} (or {DEBUG_VARIABLE}=1): show the traceback of an error."
    return parser


def dataclass_parser(dataclass_types):
    """HfArgumentParser over the dataclasses: exact flags only, bad flags and values in one line.

    argparse takes any unambiguous prefix of a flag by default, so a flag we do not have that happens to begin
    another one (`RL_stage2.py --reward_model v`) would silently set that other one (--reward_model_path).
    """
    from transformers import HfArgumentParser

    return one_line_errors(HfArgumentParser(dataclass_types, allow_abbrev=False))


def argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """A plain argparse parser for the benches and helpers: exact flags only (see dataclass_parser), errors in one
    line, the description shown as written."""
    return one_line_errors(
        argparse.ArgumentParser(
            description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
        )
    )


def parse(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """The dataclasses of a script's command line (HfArgumentParser); bad flags and values end in one line."""
    parser = dataclass_parser(dataclass_types)
    *groups, leftovers = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if leftovers:
        parser.error(unknown_flags_message(parser, leftovers))
    return tuple(groups)


def check_ranges(
    args: object,
    *,
    at_least_1: Iterable[str] = (),
    at_least_0: Iterable[str] = (),
    above_0: Iterable[str] = (),
    shares: Iterable[str] = (),
    fractions: Iterable[str] = (),
) -> None:
    """Stop (InputError) at the first flag whose value makes no sense; None (not given) is fine.

    at_least_1: counts and sizes; at_least_0: where 0 means "none" or "off"; above_0: amounts;
    shares: from 0 up to, not including, 1; fractions: strictly between 0 and 1.
    """
    rules = (
        [(name, lambda v: v >= 1, "at least 1") for name in at_least_1]
        + [(name, lambda v: v >= 0, "0 or more") for name in at_least_0]
        + [(name, lambda v: v > 0, "above 0") for name in above_0]
        + [(name, lambda v: 0 <= v < 1, "at least 0 and below 1") for name in shares]
        + [(name, lambda v: 0 < v < 1, "between 0 and 1 (exclusive)") for name in fractions]
    )
    for name, ok, expected in rules:
        value = getattr(args, name)
        if value is not None and not ok(value):
            raise InputError(f"--{name} must be {expected} (got {value})")
