"""What every command module shares: the consoles, error handling, JSON output."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

# soft_wrap: a long line (a path above all) is never broken where a user would copy it; tables still fit.
console = Console(stderr=False, soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT = 2


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the Exit to raise: `raise fail("...")`."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


def print_json(data: Any) -> None:
    """Machine-readable output for `--json`: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def existing_path(path: Path, what: str) -> Path:
    if not path.exists():
        raise fail(f"{what} '{path}' does not exist; check the path.")
    return path


def out_folder(path: Path | None, option: str = "--out") -> Path | None:
    """`path` when it is a folder or does not exist yet (it is created later); a file there is refused now, before
    any work, instead of failing at the end when the results are written."""
    if path is not None and path.exists() and not path.is_dir():
        raise fail(f"{option} '{path}' is a file; pass a folder (it is created when missing).")
    return path


def refuse_empty_inputs(items: list[str], accepted: str) -> None:
    """An empty command-line input is refused: Path('') is '.', so an unset shell variable (`predict RUN "$IMAGES"`)
    would mean every image under the current folder. `accepted`: what to give instead."""
    if any(not str(item).strip() for item in items):
        raise fail(f"an input is empty (an unset shell variable?); give {accepted}.")


@functools.cache
def _command(app: typer.Typer) -> Any:
    """The click command typer builds from `app`'s functions, built once a process: calling `app` builds it again
    every time (about 14 ms; a program that calls `main` many times, the test suite above all, paid it each time).
    Ctrl-C inside a command leaves it as `_Interrupted`: typer turns a KeyboardInterrupt into a silent exit 130."""
    command = typer.main.get_command(app)
    invoke = command.invoke

    def invoke_interruptible(ctx: Any) -> Any:
        try:
            return invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc

    command.invoke = invoke_interruptible
    return command


class _Interrupted(Exception):
    """Ctrl-C during a command, carried past typer (which would exit 130 without a word) to `run_command`."""


def run_command(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run the typer app; turn SightlineError into one line and exit code 2, never a traceback.

    Usage errors (an unknown option, a value that does not parse, a missing argument) are click's, found before the
    command runs: one line too, with the command's --help to read, and exit code 2 (click printed a usage line, a
    hint and a boxed message, five lines or more)."""
    from sightline.errors import SightlineError, one_line

    try:
        code = _command(app).main(args=argv, prog_name="sightline", standalone_mode=False)
    except SightlineError as exc:
        err_console.print(f"[bold red]error:[/] {escape(one_line(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except typer.TyperException as exc:  # click's own exceptions (typer ships click inside)
        if type(exc).__name__ != "NoArgsIsHelpError":  # `sightline data` alone: typer has printed its help
            err_console.print(f"[bold red]error:[/] {escape(usage_error(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Abort:  # end of input at a prompt
        err_console.print("aborted")
        return 1
    except OSError as exc:
        # A path the user gave that is a file where a folder is needed (or the reverse), that cannot be written, is
        # too long, or whose disk is full or read-only: theirs to fix, so one line naming it instead of a
        # traceback. An OSError about no path (a socket, a library's own) is not the user's: it keeps its traceback.
        if exc.filename is None:
            raise
        err_console.print(f"[bold red]error:[/] {escape(path_error(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except (KeyboardInterrupt, _Interrupted):
        err_console.print("interrupted")
        return 130
    # Not standalone, click returns what the command returned, or a typer.Exit's code (the commands return None)
    return code if isinstance(code, int) else 0


def usage_error(exc: Exception) -> str:
    """One line for a click usage error: its message, then which --help to read."""
    message = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message + "."
    return f"{message}; see '{ctx.command_path} --help'."


def path_error(exc: OSError) -> str:
    """One line for an OSError about a path: which path, what is wrong with it, what to do."""
    import errno

    name = exc.filename if exc.filename is not None else "a path"
    if isinstance(exc, FileExistsError):
        return f"'{name}' exists and is not a folder; pass a new or existing folder, or move the file away."
    if isinstance(exc, NotADirectoryError):
        return f"'{name}': part of this path is a file, not a folder; check the path."
    if isinstance(exc, IsADirectoryError):
        return f"'{name}' is a folder where a file is needed; pass a file."
    if isinstance(exc, PermissionError):
        return f"'{name}' cannot be read or written (permission denied); check its permissions or choose another path."
    if exc.errno == errno.ENAMETOOLONG:
        return f"'{name}': a name in this path is too long for the file system (255 bytes at most); shorten it."
    if exc.errno == errno.EROFS:
        return f"'{name}' is on a read-only file system; choose a writable folder."
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"'{name}' cannot be written: no space left (or the quota is used up); free some or choose another disk."
    if isinstance(exc, FileNotFoundError):
        return f"'{name}' does not exist (or cannot be created there); check the path."
    return f"'{name}': {exc.strerror or exc}; check the path."
