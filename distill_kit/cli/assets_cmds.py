"""``distill-kit assets fetch``: download a manifest's hub assets at their pinned revisions (outside any run)."""

from __future__ import annotations

import typer

from distill_kit.cli.progress import wide

app = typer.Typer(help="Models and datasets a manifest needs, in the local cache.", no_args_is_help=True)


@app.command()
def fetch(manifest: str = typer.Argument(..., help="Manifest path or name.")) -> int:
    """Download the manifest's hub models and datasets at their pinned revisions, recording sizes and hashes."""
    from rich.console import Console

    from distill_kit.assets.fetch import fetch_assets
    from distill_kit.manifest import load_manifest

    resolved = load_manifest(manifest)
    console = Console(highlight=False, soft_wrap=True, width=wide())
    for record in fetch_assets(resolved.document, log=console.print):
        console.print(f"{record['id']}@{record['revision'][:12]}: {record['files']} files, {record['bytes']:,} "
                      f"bytes -> {record['path']}")
    return 0
