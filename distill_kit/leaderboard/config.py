"""Leaderboard settings: where the database and the bundles live, and the limits a submission must respect."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from distill_kit.errors import InvalidInput

ADMIN_TOKEN_ENV = "DISTILL_KIT_LEADERBOARD_TOKEN"
DEFAULT_DATA_DIR = Path("leaderboard-data")
ADMIN_MAX_BODY_BYTES = 64 << 10


def database_url(url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL: a SQLite file in ``data_dir`` by default; ``postgresql://`` goes through psycopg 3."""
    if not url:
        return f"sqlite:///{(Path(data_dir) / 'leaderboard.db').resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("postgresql+psycopg://", "sqlite://")):
        return url
    raise InvalidInput(f"--db {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


@dataclass
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str | None = None
    max_upload_bytes: int = 512 << 20
    rate_per_minute: float = 30.0  # submissions per registered key whose signature verified
    rate_burst: int = 10
    ip_rate_per_minute: float = 60.0  # submissions per client address, counted before any work
    ip_rate_burst: int = 20
    verify_timeout_s: float = 120.0
    verify_workers: int = 2
    verify_memory_mb: int = 512  # RLIMIT_AS of a verifier process
    verify_cpu_s: int = 120  # RLIMIT_CPU of one verification
    max_document_bytes: int = 8 << 20  # a JSON document or journal the verifier parses
    max_trace_bytes: int = 16 << 20  # a stage's trace, uncompressed
    admin_token: str | None = None
    # serving limits (security.py, render.py; `leaderboard serve --help`)
    header_timeout_s: float = 10.0  # a request's headers must be complete this long after its first byte
    body_timeout_s: float = 300.0  # a request's whole body must arrive this long after its headers
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 200  # connections + requests in progress; more are answered 503
    backlog: int = 512  # connections the kernel queues before accept
    max_header_bytes: int = 16384  # the most bytes of an incomplete request head buffered
    render_workers: int = 2  # plot processes
    render_timeout_s: float = 20.0  # one plot's time limit (the process is killed past it)
    render_queue_timeout_s: float = 15.0  # longest wait for a free plot process before a 503

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.admin_token is None:
            self.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        problems = [f"{name} must be positive (got {value})" for name, value in
                    (("max upload bytes", self.max_upload_bytes), ("rate per minute", self.rate_per_minute),
                     ("rate burst", self.rate_burst), ("rate per minute per address", self.ip_rate_per_minute),
                     ("rate burst per address", self.ip_rate_burst), ("verify timeout", self.verify_timeout_s),
                     ("verify workers", self.verify_workers), ("verify memory", self.verify_memory_mb),
                     ("verify CPU time", self.verify_cpu_s), ("max document bytes", self.max_document_bytes),
                     ("max trace bytes", self.max_trace_bytes), ("header timeout", self.header_timeout_s),
                     ("body timeout", self.body_timeout_s), ("keep-alive", self.keep_alive_s),
                     ("max connections", self.max_connections), ("backlog", self.backlog),
                     ("max header bytes", self.max_header_bytes), ("render workers", self.render_workers),
                     ("render timeout", self.render_timeout_s),
                     ("render queue timeout", self.render_queue_timeout_s)) if value <= 0]
        if problems:
            raise InvalidInput("; ".join(problems))

    @property
    def url(self) -> str:
        return database_url(self.db_url, self.data_dir)

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"
