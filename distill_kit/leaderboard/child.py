"""A spawned helper process fed through a pipe: the verifier workers and the plot workers share this life.

Started on demand, stopped politely (``None`` down the pipe, then join) or killed (a job past its limit); either
way the pipe is closed and the next job starts a fresh process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

JOIN_S = 5.0


class ChildProcess:
    """One child process running ``target(connection, *args)``; ``process``/``connection`` are None when stopped."""

    def __init__(self, context: Any, name: str, target: Callable[..., None], args: tuple[Any, ...] = ()):
        self.context, self.name, self.target, self.args = context, name, target, args
        self.process: Any = None
        self.connection: Any = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start_process(self) -> None:
        parent, child = self.context.Pipe()
        self.process = self.context.Process(target=self.target, args=(child, *self.args), daemon=True,
                                            name=self.name)
        self.process.start()
        child.close()
        self.connection = parent

    def ensure_started(self) -> None:
        if not self.alive:
            self.start_process()

    def stop_process(self, kill: bool) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except OSError:
                pass
        self.process.join(timeout=JOIN_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=JOIN_S)
        self.connection.close()
        self.process = self.connection = None
