"""``distill-kit leaderboard serve``: the application under one uvicorn process, with the serving limits.

One process on purpose (see ``security``'s module doc for why not gunicorn): uvicorn's h11 protocol with a
header-read deadline (``security.HeaderDeadline``), the request-body deadline in the app's middleware, and
uvicorn's own connection limits.
"""

from __future__ import annotations

from distill_kit.leaderboard.config import Settings


def uvicorn_config(settings: Settings, host: str, port: int, log_level: str = "info"):  # type: ignore[no-untyped-def]
    import uvicorn

    from distill_kit.leaderboard.app import create_app
    from distill_kit.leaderboard.security import header_deadline_protocol

    return uvicorn.Config(
        create_app(settings), host=host, port=port, log_level=log_level, proxy_headers=False,
        server_header=False, date_header=True, timeout_graceful_shutdown=10,
        http=header_deadline_protocol(settings.header_timeout_s),  # slowloris: headers cut at the deadline
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works
        limit_concurrency=settings.max_connections,  # connections + in-flight requests; 503 past it
        backlog=settings.backlog, h11_max_incomplete_event_size=settings.max_header_bytes)


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.Server(uvicorn_config(settings, host, port, log_level)).run()
