"""What every script does with its command line: one-line refusals and the --quick defaults.

    from common.cli import run_main
    if __name__ == "__main__":
        run_main(main)

A user's mistake (a missing file, a bad value, a corrupt checkpoint, a folder another run is
writing) ends the script with ONE line on stderr, `error: <what is wrong and what to do>`, and
exit code 2; Ctrl-C ends it with exit code 130. No traceback: the message is the whole story.
A bug of the project (any other exception) keeps its full traceback. To see the traceback of a
refusal too, add --debug to the command line or set LORA_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common.files import FolderLocked

EXIT_USER_ERROR = 2  # the code argparse uses for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
DEBUG_FLAG = "--debug"
DEBUG_ENV = "LORA_DEBUG"


class UserError(Exception):
    """A mistake of the user's, not of the code. The message names the problem and what to do."""


def user_facing_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "bad input" rather than "bug": refused in one line by run_main."""
    errors: list[type[BaseException]] = [UserError, FolderLocked, FileNotFoundError, NotADirectoryError,
                                         IsADirectoryError, PermissionError, ValueError]  # UnicodeDecodeError is a ValueError
    try:
        from safetensors import SafetensorError  # a corrupt or truncated .safetensors file
        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def error_message(err: BaseException) -> str:
    """One line for the user: the exception's own message, without Python's decorations."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.strerror}: {err.filename}"  # not "[Errno 2] No such file or directory: 'x'"
    else:
        text = str(err) or type(err).__name__
    if isinstance(err, UnicodeDecodeError):
        text = f"a file is not UTF-8 text ({text}); save it as UTF-8 and try again"
    return " ".join(text.split())  # one line, whatever the message held


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(main: Callable, argv: Sequence[str] | None = None):
    """Call main(argv) (argv without --debug; sys.argv[1:] when None) and turn a user's mistake into
    `error: <message>` on stderr and exit code 2 (130 for Ctrl-C). Returns main's result.

    With --debug or LORA_DEBUG=1 nothing is caught: the full traceback shows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    if debug:
        return main(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("error: interrupted; files are written whole or not at all, so none was left half-written",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except user_facing_errors() as err:
        print(f"error: {error_message(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line (a missing or unknown flag, a value of the wrong
    type, a bad choice, a script's own parser.error) is one line, `error: <message> (see --help)`,
    and exit code 2, like every other refusal; argparse itself prints its usage block first.
    Defaults are shown in --help (ArgumentDefaultsHelpFormatter) unless formatter_class is given."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def parse_with_quick(parser: argparse.ArgumentParser, quick: dict, argv: Sequence[str] | None = None,
                     flag: str = "quick") -> argparse.Namespace:
    """parser.parse_args(argv), where --quick (a store_true flag named `flag`) swaps in the `quick`
    defaults (a tiny model, a few steps: the tests' and CI's run). Flags given explicitly still win,
    because the defaults change and the command line is parsed again."""
    args = parser.parse_args(argv)
    if getattr(args, flag):
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def check_results_folder(args: argparse.Namespace, name: str, root: Path) -> Path:
    """The folder a comparison script writes <name>.{json,md,png} into: --results (args.results), by default
    root/results, or root/runs/quick/<name> with --quick. Refused: a file in its place, and a --quick run where
    a real record (one not marked "quick") would be replaced. Sets args.results; returns the folder."""
    import json

    if args.results is None:
        args.results = str(root / "runs" / "quick" / name if args.quick else root / "results")
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results} is a file, not a folder")
    old = results / f"{name}.json"
    if args.quick and old.is_file() and not json.loads(old.read_text()).get("quick"):
        raise UserError(f"--results {results} holds a real {name} record; a --quick run never replaces it")
    return results


def check_at_least(args: argparse.Namespace, **minimums: int) -> None:
    """Refuse any of these options (by attribute name) that was given below its minimum: --max-steps 0."""
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UserError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse repeated or negative --seeds."""
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must be different integers >= 0, got {list(seeds)}")
