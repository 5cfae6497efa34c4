"""Rich progress bars for stages (the ``Progress`` protocol of ``distill_kit.stages.base``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def wide() -> int | None:
    """Tables need room: at least 160 columns when the output is not a terminal (logs, CI)."""
    import shutil
    import sys

    return None if sys.stdout.isatty() else max(160, shutil.get_terminal_size((160, 24)).columns)


class RichProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)

    def log(self, message: str) -> None:
        self.console.print(message)
