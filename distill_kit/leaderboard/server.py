"""``distill-kit leaderboard serve``: the application under uvicorn."""

from __future__ import annotations

from distill_kit.leaderboard.config import Settings


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    from distill_kit.leaderboard.app import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, proxy_headers=False,
                timeout_graceful_shutdown=10)
