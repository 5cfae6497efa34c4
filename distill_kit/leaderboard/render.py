"""PNG plots for the pages, rendered off the event loop and off the request threads, cached by data version.

``Renders.png(key, version, name, *args)``:
(1) a cached PNG for (key, version) is answered at once (the version is the store's change marker: any accepted,
    changed or removed entry gives a new one; entries also expire after ``ttl_s``);
(2) the same plot already being drawn is waited for, not drawn twice;
(3) otherwise it waits for one of ``workers`` render processes (at most ``queue_timeout_s``: then ``RenderBusy``,
    a 503), and the process draws it within ``timeout_s`` or is killed and replaced (``RenderFailed``).

matplotlib holds the GIL while it draws: in worker processes it cannot slow the server's other requests, and no
request thread (anyio's pool of 40) is held while a plot waits or draws.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distill_kit.leaderboard.child import ChildProcess

ALLOWED = frozenset({"pareto_png", "stage_breakdown_png"})


class RenderBusy(Exception):
    """Every render process stayed busy for the whole wait."""


class RenderFailed(Exception):
    """The plot could not be drawn (took too long, or failed inside the worker)."""


def _worker(connection: Any) -> None:
    """A render process's loop: (name, args) in, ("ok", png) or ("error", text) out; None ends it. It runs at a
    lower CPU priority than the server, and imports matplotlib before its first job."""
    import os

    os.nice(10)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.backends.backend_agg  # noqa: F401 - warm: the first plot need not wait for the import
    import matplotlib.figure  # noqa: F401

    from distill_kit.report import plots

    while True:
        try:
            job = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        name, args = job
        try:
            connection.send(("ok", getattr(plots, name)(*args)))
        except Exception as err:  # noqa: BLE001 - reported to the request as a failed render
            connection.send(("error", f"{type(err).__name__}: {err}"))


class _Slot(ChildProcess):
    """One render process (started on first use, replaced after a kill)."""

    def __init__(self, context: Any, index: int):
        super().__init__(context, f"distill-kit-render-{index}", _worker)

    def run(self, name: str, args: tuple[Any, ...], timeout_s: float) -> bytes:
        """(3) Draw in this slot's process (blocking: called from the render threads, never the event loop)."""
        self.ensure_started()
        try:
            self.connection.send((name, args))
            if not self.connection.poll(timeout_s):
                self.stop_process(kill=True)
                raise RenderFailed(f"the plot took longer than {timeout_s:g} s")
            status, value = self.connection.recv()
        except (EOFError, OSError) as err:
            self.stop_process(kill=True)
            raise RenderFailed("the render process died") from err
        if status != "ok":
            raise RenderFailed(value)
        return value


class _Cache:
    """LRU of PNG bytes, bounded in bytes, each kept at most ``ttl_s``."""

    def __init__(self, max_bytes: int, ttl_s: float):
        self.max_bytes, self.ttl_s = max_bytes, ttl_s
        self.items: OrderedDict[tuple[Any, ...], tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        item = self.items.get(key)
        if item is None:
            return None
        if time.monotonic() - item[0] > self.ttl_s:
            self._drop(key)
            return None
        self.items.move_to_end(key)
        return item[1]

    def put(self, key: tuple[Any, ...], png: bytes) -> None:
        if len(png) > self.max_bytes:
            return
        if key in self.items:
            self._drop(key)
        self.items[key] = (time.monotonic(), png)
        self.bytes += len(png)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.items)))

    def _drop(self, key: tuple[Any, ...]) -> None:
        self.bytes -= len(self.items.pop(key)[1])


class Renders:
    """The render processes, their waiting room and the cache (see the module doc)."""

    def __init__(self, workers: int, timeout_s: float, queue_timeout_s: float, cache_bytes: int = 64 << 20,
                 ttl_s: float = 300.0):
        context = multiprocessing.get_context("spawn")
        self.timeout_s, self.queue_timeout_s = timeout_s, queue_timeout_s
        self.idle = [_Slot(context, i) for i in range(workers)]
        self.threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render")
        self.cache = _Cache(cache_bytes, ttl_s)
        self.drawing: dict[tuple[Any, ...], asyncio.Future[bytes]] = {}
        self._lock = threading.Lock()
        self._free: asyncio.Semaphore | None = None

    async def png(self, key: tuple[Any, ...], version: Any, name: str, *args: Any) -> bytes:
        assert name in ALLOWED, name
        full = (*key, version)
        cached = self.cache.get(full)  # (1)
        if cached is not None:
            return cached
        shared = self.drawing.get(full)  # (2)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.drawing[full] = future
        try:
            png = await self._draw(name, args)  # (3)
            self.cache.put(full, png)
            future.set_result(png)
            return png
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:
            future.set_exception(err)
            future.exception()  # retrieved here: each waiter re-raises it
            raise
        finally:
            self.drawing.pop(full, None)

    async def _draw(self, name: str, args: tuple[Any, ...]) -> bytes:
        if self._free is None:
            self._free = asyncio.Semaphore(len(self.idle))
        free = self._free
        try:
            await asyncio.wait_for(free.acquire(), self.queue_timeout_s)
        except TimeoutError:
            raise RenderBusy(f"every plot worker stayed busy for {self.queue_timeout_s:g} s") from None
        with self._lock:
            slot = self.idle.pop()

        def release(_done: Any) -> None:
            with self._lock:
                self.idle.append(slot)
            free.release()

        running = asyncio.get_running_loop().run_in_executor(self.threads, slot.run, name, args, self.timeout_s)
        running.add_done_callback(release)  # the slot returns only when its process is done, even if we're cancelled
        return await asyncio.shield(running)

    def start(self) -> None:
        """Start the render processes now (otherwise each starts on its first plot)."""
        for slot in self.idle:
            slot.start_process()

    def close(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)
        for slot in self.idle:
            slot.stop_process(kill=False)
