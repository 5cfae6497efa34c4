"""The one place where errors become messages and exit codes (STYLE.md 9).

The kit's own errors print their message; usage errors print click's; anything unexpected prints one line
naming it (the traceback only with DISTILL_KIT_DEBUG=1). Never a traceback by default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import typer

from distill_kit.errors import EXIT_BAD_INPUT, EXIT_FAILED, DistillKitError, InvalidManifest, OutputNotWritable

try:  # typer >= 0.25 vendors click; its exceptions are not click's own
    from typer import _click as _vendored_click
except ImportError:  # pragma: no cover - older typer
    _vendored_click = click

_CLICK = {click, _vendored_click}
EXIT_EXCEPTIONS = (click.exceptions.Exit, typer.Exit)
ABORT_EXCEPTIONS = (click.exceptions.Abort, typer.Abort)
CLICK_EXCEPTIONS = tuple(m.exceptions.ClickException for m in _CLICK)
USAGE_EXCEPTIONS = tuple(m.exceptions.UsageError for m in _CLICK)


@contextmanager
def output_flag(flag: str) -> Iterator[None]:
    """Name the flag in a write-location error raised inside (``--out: cannot write ...: it is a directory``)."""
    try:
        yield
    except OutputNotWritable as err:
        raise OutputNotWritable(f"{flag}: {err} (choose another {flag})") from err


INTERRUPTED = "interrupted (a run's directory keeps what finished: continue it with --resume)"


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(message)}")


def run_app(app: typer.Typer) -> None:
    try:
        result = app(standalone_mode=False)
    except DistillKitError as err:
        if isinstance(err, InvalidManifest):
            _print_error(f"invalid manifest {err}")
        else:
            _print_error(str(err))
        sys.exit(err.exit_code)
    except EXIT_EXCEPTIONS as err:
        sys.exit(err.exit_code)
    except ABORT_EXCEPTIONS:
        _print_error("interrupted")
        sys.exit(130)
    except CLICK_EXCEPTIONS as err:
        err.show()
        sys.exit(EXIT_BAD_INPUT if isinstance(err, USAGE_EXCEPTIONS) else err.exit_code)
    except KeyboardInterrupt:
        _print_error(INTERRUPTED)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("DISTILL_KIT_DEBUG") == "1":
            raise
        _print_error(f"internal error: {type(err).__name__}: {err} (set DISTILL_KIT_DEBUG=1 for the traceback)")
        sys.exit(EXIT_FAILED)
    if result == 130:  # typer turns a KeyboardInterrupt inside a command into a silent Exit(130)
        _print_error(INTERRUPTED)
    sys.exit(result if isinstance(result, int) else 0)
