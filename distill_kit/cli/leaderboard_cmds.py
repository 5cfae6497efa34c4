"""``distill-kit leaderboard serve|add-key|revoke-key|keys|hide|delete|ban-key`` and ``distill-kit submit``."""

from __future__ import annotations

from pathlib import Path

import typer

from distill_kit.cli.progress import wide
from distill_kit.errors import EXIT_BAD_INPUT, EXIT_FAILED, InvalidInput
from distill_kit.leaderboard.config import Settings as SERVING  # the serving limits' defaults (light import)

app = typer.Typer(help="The shared leaderboard: serve it, manage its teams' keys.", no_args_is_help=True)

DB_HELP = "Database URL: sqlite:///PATH or postgresql://USER@HOST/DB (default: DATA_DIR/leaderboard.db)."
DATA_HELP = "Folder for the database (SQLite) and the stored bundles."




def _store(db: str | None, data_dir: Path):  # type: ignore[no-untyped-def]
    from distill_kit.leaderboard.config import database_url
    from distill_kit.leaderboard.store import Store

    try:
        return Store(database_url(db, data_dir))
    except InvalidInput:
        raise
    except Exception as err:  # noqa: BLE001 - SQLAlchemy/driver errors: a database that cannot be reached
        raise InvalidInput(f"cannot open the database: {type(err).__name__}: {str(err).splitlines()[0]}") from err


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=wide())


@app.command()
def serve(
    db: str = typer.Option(None, "--db", help=DB_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
    max_upload_mb: float = typer.Option(512, "--max-upload-mb", help="Largest bundle accepted (MiB)."),
    rate_per_minute: float = typer.Option(30, "--rate-per-minute", help="Submissions per minute per registered "
                                          "key (counted once its signature verified)."),
    rate_burst: int = typer.Option(10, "--rate-burst", help="Submissions a key may send at once."),
    ip_rate_per_minute: float = typer.Option(60, "--ip-rate-per-minute", help="Submissions per minute per client "
                                             "address (counted before any work)."),
    ip_rate_burst: int = typer.Option(20, "--ip-rate-burst", help="Submissions an address may send at once."),
    verify_timeout_s: float = typer.Option(120, "--verify-timeout-s", help="Time limit of one verification."),
    workers: int = typer.Option(2, "--verify-workers", help="Verifier processes."),
    header_timeout_s: float = typer.Option(SERVING.header_timeout_s, "--header-timeout-s", help="Close a "
                                           "connection whose request headers are not complete this long after "
                                           "its first byte (slow clients)."),
    body_timeout_s: float = typer.Option(SERVING.body_timeout_s, "--body-timeout-s", help="Answer 408 and close "
                                         "when a request body has not fully arrived this long after its headers."),
    keep_alive_s: float = typer.Option(SERVING.keep_alive_s, "--keep-alive-s", help="Close idle keep-alive "
                                       "connections after this."),
    max_connections: int = typer.Option(SERVING.max_connections, "--max-connections", help="Open connections "
                                        "and requests in progress at most; past it, 503."),
    backlog: int = typer.Option(SERVING.backlog, "--backlog", help="Connections the kernel queues before accept."),
    max_header_bytes: int = typer.Option(SERVING.max_header_bytes, "--max-header-bytes", help="Largest request "
                                         "head (request line + headers) buffered; past it, 400."),
    render_workers: int = typer.Option(SERVING.render_workers, "--render-workers", help="Processes drawing the "
                                       "pages' plots."),
    render_timeout_s: float = typer.Option(SERVING.render_timeout_s, "--render-timeout-s", help="Time limit of "
                                           "one plot (its process is killed past it)."),
    verify_memory_mb: int = typer.Option(512, "--verify-memory-mb", help="Address-space limit of a verifier "
                                         "process (MiB)."),
    verify_cpu_s: int = typer.Option(120, "--verify-cpu-s", help="CPU-time limit of one verification (s)."),
    max_trace_mb: float = typer.Option(16, "--max-trace-mb", help="Largest stage trace read (MiB, uncompressed)."),
    max_document_mb: float = typer.Option(8, "--max-document-mb", help="Largest JSON document or journal read "
                                          "(MiB)."),
) -> int:
    """Run the leaderboard server (admin API enabled when DISTILL_KIT_LEADERBOARD_TOKEN is set)."""
    from distill_kit.leaderboard.config import Settings
    from distill_kit.leaderboard.server import serve as run_server

    if not 0 < port < 65536:
        raise InvalidInput(f"--port must be between 1 and 65535 (got {port})")
    settings = Settings(data_dir=data_dir, db_url=db, max_upload_bytes=int(max_upload_mb * (1 << 20)),
                        rate_per_minute=rate_per_minute, rate_burst=rate_burst, ip_rate_per_minute=ip_rate_per_minute,
                        ip_rate_burst=ip_rate_burst, verify_timeout_s=verify_timeout_s, verify_workers=workers,
                        verify_memory_mb=verify_memory_mb, verify_cpu_s=verify_cpu_s,
                        max_trace_bytes=int(max_trace_mb * (1 << 20)),
                        max_document_bytes=int(max_document_mb * (1 << 20)), header_timeout_s=header_timeout_s,
                        body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s, max_connections=max_connections,
                        backlog=backlog, max_header_bytes=max_header_bytes, render_workers=render_workers,
                        render_timeout_s=render_timeout_s)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _store(db, data_dir).close()  # reach and migrate the database first: a bad --db is one message, exit 2
    run_server(settings, host, port)
    return 0


@app.command("add-key")
def add_key(
    team: str = typer.Option(..., "--team", help="The team the key signs for (created if new)."),
    pub: Path = typer.Option(..., "--pub", help="The team's Ed25519 public key (PREFIX.pub from `keygen`)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
) -> int:
    """Register a team's public key: bundles it signs are accepted, for that team."""
    from distill_kit.bundle.keys import _read_key_file

    data = _read_key_file(pub, "public key")
    key, created = _store(db, data_dir).add_key(team, data, str(pub))
    verb = "registered" if created else "already registered"
    _console().print(f"{verb}: key {key.key_id} for team {key.team}")
    return 0


@app.command("revoke-key")
def revoke_key(
    key_id: str = typer.Argument(..., help="The key id (sha256 of the raw public key)."),
    reason: str = typer.Option(..., "--reason", help="Why (shown to whoever submits with it)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
) -> int:
    """Revoke a registered key: its bundles are refused from now on."""
    key = _store(db, data_dir).revoke_key(key_id, reason)
    _console().print(f"revoked: key {key.key_id} of team {key.team} ({key.revoked_reason})")
    return 0


@app.command("hide")
def hide(
    sha256: str = typer.Argument(..., help="The entry's bundle sha256."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded with the time)."),
    undo: bool = typer.Option(False, "--undo", help="Show the entry again."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
) -> int:
    """Hide an entry: it leaves every list, frontier and page, and stays in the database."""
    done = _store(db, data_dir).hide(sha256, reason, hidden=not undo)
    _console().print(f"{done.action}: entry {done.bundle_sha256} ({done.reason})")
    return 0


@app.command("delete")
def delete(
    sha256: str = typer.Argument(..., help="The entry's bundle sha256."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded with the time)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
) -> int:
    """Delete an entry and its stored bundle; the run stays refused (the moderation log says why)."""
    from distill_kit.leaderboard.config import Settings

    done = _store(db, data_dir).delete(sha256, reason, Settings(data_dir=data_dir).bundles_dir)
    _console().print(f"deleted: entry {done.bundle_sha256} ({done.reason})")
    return 0


@app.command("ban-key")
def ban_key(
    key_id: str = typer.Argument(..., help="The key id (sha256 of the raw public key)."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded with the time)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
) -> int:
    """Ban a key: revoked (its bundles refused from now on), the ban recorded."""
    done = _store(db, data_dir).ban_key(key_id, reason)
    _console().print(f"banned: key {done.key_id} ({done.reason})")
    return 0


@app.command("keys")
def list_keys(
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path = typer.Option(Path("leaderboard-data"), "--data-dir", help=DATA_HELP),
) -> int:
    """List the registered keys and their teams."""
    from rich.table import Table

    table = Table(title="registered keys", title_justify="left")
    for column in ("key id", "team", "added", "revoked"):
        table.add_column(column)
    for key in _store(db, data_dir).keys():
        table.add_row(key.key_id, key.team, key.added_at.strftime("%Y-%m-%d %H:%M"),
                      f"yes: {key.revoked_reason}" if key.revoked else "no")
    _console().print(table)
    return 0


def register_submit(root: typer.Typer) -> None:
    @root.command()
    def submit(
        bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The signed bundle (.tar)."),
        to: str = typer.Option(..., "--to", help="The leaderboard's URL, e.g. http://127.0.0.1:8000."),
        as_json: bool = typer.Option(False, "--json", help="Print the server's answer as JSON."),
    ) -> int:
        """Upload a bundle to a leaderboard (exit 0 accepted, 1 rejected or unreachable, 2 bad input)."""
        import json

        from rich.markup import escape

        from distill_kit.leaderboard.client import submit as send

        outcome = send(bundle, to)
        console = _console()
        if as_json:
            print(json.dumps(outcome.body or {"reason": outcome.reason}, indent=2, sort_keys=True))
        elif outcome.accepted:
            entry = outcome.body.get("entry") or {}
            base = outcome.url.rsplit("/api/", 1)[0]
            what = "already on the leaderboard" if outcome.body.get("duplicate") else "accepted"
            console.print(f"[green]{what}[/green]: {escape(str(entry.get('name')))} for team "
                          f"{escape(str(entry.get('team')))}, {base}{entry.get('url', '')}")
        else:
            status = f"HTTP {outcome.http_status}" if outcome.http_status else "no answer"
            console.print(f"[bold red]rejected[/bold red] ({status}): {escape(outcome.reason)}")
            for check in outcome.body.get("failed_checks") or []:
                console.print(f"  [bold red][FAIL][/bold red] {escape(check['name'])}: {escape(check['reason'])}")
        if outcome.accepted:
            return 0
        return EXIT_BAD_INPUT if outcome.bad_input else EXIT_FAILED
