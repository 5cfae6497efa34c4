"""``distill-kit tasks``: the evaluation tasks the kit can run, with their source and full size."""

from __future__ import annotations

import typer

from distill_kit.cli.progress import wide


def register(app: typer.Typer) -> None:
    @app.command()
    def tasks(
        as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    ) -> int:
        """List the tasks eval.tasks may name: harness, judge needed, full size and data source (exit 0)."""
        import json

        from rich.console import Console
        from rich.table import Table

        from distill_kit.evaluation.registry import task_catalog

        catalog = task_catalog()
        if as_json:
            print(json.dumps([t.to_dict() for t in catalog], indent=2))
            return 0
        table = Table(title="evaluation tasks (eval.tasks)", title_justify="left")
        for column in ("task", "harness", "judge", "full size", "source"):
            table.add_column(column, justify="right" if column == "full size" else "left", overflow="fold")
        for t in catalog:
            size = f"{t.size:,} {t.unit}" if t.size is not None else t.unit
            table.add_row(t.task, t.harness, "yes" if t.judge else "", size, t.source)
        Console(highlight=False, soft_wrap=False, width=wide()).print(table)
        return 0
