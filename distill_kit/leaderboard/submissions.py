"""Receiving a submission: bounded upload, rate limit, verification in a worker, then stored once or kept nowhere.

The procedure (``Submissions.handle``):
(1) stream the upload (raw body or the one file of a multipart form) into ``incoming/``, refusing it past the size
    limit (413) and refusing an empty or malformed one (400);
(2) read the archive once, bounded, for its sha256 and signer.pub: not a tar at all is a 400;
(3) rate limit per signing key, or per client IP when the bundle carries no usable key (429);
(4) a bundle already on the board is answered at once (idempotent: 200, ``duplicate``);
(5) verify in a worker process against the registered keys, with a time limit; the same bundle arriving twice
    meanwhile shares one verification;
(6) a bundle that fails is deleted and answered with its failing checks: 403 when only the signer's key is the
    problem (unregistered, revoked), otherwise 422;
(7) a bundle that passes is moved (fsync'd, atomic rename) to ``bundles/<sha256>.tar``, then its entry is added
    (201), the team being the signing key's.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from distill_kit.leaderboard.config import Settings
from distill_kit.leaderboard.models import CheckOut, SubmissionOut
from distill_kit.leaderboard.store import NewEntry, Store
from distill_kit.leaderboard.verifier import Job, VerificationTimeout, VerifierPool, WorkerCrashed

CHUNK = 1 << 16
KEY_CHECK = "trusted-key"


class Rejection(Exception):
    """A submission refused before or by verification: an HTTP status and the answer's body."""

    def __init__(self, status: int, out: SubmissionOut, headers: dict[str, str] | None = None):
        super().__init__(out.reason)
        self.status, self.out, self.headers = status, out, headers or {}


def reject(status: int, reason: str, **fields: Any) -> Rejection:
    return Rejection(status, SubmissionOut(status="rejected", reason=reason, **fields))


class TooLarge(Exception):
    pass


# -- rate limit ----------------------------------------------------------------------------------------------
class RateLimiter:
    """Token buckets: ``burst`` submissions at once, refilled at ``per_minute``; one bucket per key or IP."""

    def __init__(self, per_minute: float, burst: int):
        self.rate_per_s, self.burst = per_minute / 60.0, float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, who: str) -> float | None:
        """None when allowed; otherwise the seconds until the next submission would be."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens < 1.0:
                self.buckets[who] = (tokens, now)
                return (1.0 - tokens) / self.rate_per_s
            self.buckets[who] = (tokens - 1.0, now)
            if len(self.buckets) > 100_000:  # forget full buckets of the idle
                self.buckets = {k: v for k, v in self.buckets.items() if v[0] < self.burst}
            return None


# -- upload --------------------------------------------------------------------------------------------------
def _limited_receive(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int
                     ) -> Callable[[], Awaitable[dict[str, Any]]]:
    seen = 0

    async def wrapped() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge()
        return message

    return wrapped


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        async for chunk in request.stream():
            yield chunk
        return
    try:
        form = await request.form(max_files=1, max_fields=8)
    except TooLarge:
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart's errors: a malformed form
        raise reject(400, f"malformed multipart upload: {err}") from err
    try:
        upload = form.get("bundle") or next((v for v in form.values() if hasattr(v, "read")), None)
        if upload is None or not hasattr(upload, "read"):
            raise reject(400, "the multipart form has no file (send the bundle in a field named 'bundle')")
        while chunk := await upload.read(CHUNK):
            yield chunk
    finally:
        await form.close()


async def receive_upload(request: Request, incoming: Path, limit: int) -> tuple[Path, int]:
    """(1) The upload, streamed into a new file in ``incoming`` (never past ``limit`` bytes)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise reject(413, f"the upload is {int(declared):,} bytes, over the limit of {limit:,}")
    limited = Request(request.scope, _limited_receive(request.receive, limit))
    incoming.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=incoming)
    path, size = Path(name), 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in _chunks(limited):
                size += len(chunk)
                if size > limit:
                    raise TooLarge()
                handle.write(chunk)
    except TooLarge:
        path.unlink(missing_ok=True)
        raise reject(413, f"the upload is over the limit of {limit:,} bytes") from None
    except ClientDisconnect:
        path.unlink(missing_ok=True)
        raise reject(400, "the upload was interrupted before its end") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise reject(400, "empty upload: send the bundle (.tar) as the request body or a multipart file")
    return path, size


@dataclass(frozen=True)
class Peek:
    sha256: str
    signer_key_id: str | None
    problem: str | None  # the archive cannot be read at all


def peek(path: Path, limit: int) -> Peek:
    """(2) One bounded pass over the archive: its sha256, and the key id of signer.pub if it holds a usable one."""
    from distill_kit.bundle.archive import Limits, scan_archive
    from distill_kit.bundle.keys import key_id, public_key_from_pem
    from distill_kit.bundle.statement import SIGNER_PUB
    from distill_kit.errors import KeyFileError

    scan = scan_archive(path, Limits(max_total_bytes=limit), lambda name: name == SIGNER_PUB)
    if scan.fatal is not None or scan.entries == 0:
        return Peek(scan.sha256 or "", None, scan.fatal or "the archive holds no members")
    member = scan.members.get(SIGNER_PUB)
    kid = None
    if member is not None and member.data is not None:
        try:
            kid = key_id(public_key_from_pem(member.data, SIGNER_PUB))
        except KeyFileError:
            kid = None
    return Peek(scan.sha256 or "", kid, None)


def _durable_move(source: Path, target: Path) -> None:
    """(7) fsync the upload, rename it into place, fsync the folder: the stored bundle survives a crash."""
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _failed_checks(report: dict[str, Any]) -> list[CheckOut]:
    return [CheckOut(**r) for r in report["results"] if r["status"] == "FAIL"]


def _verdict(result: dict[str, Any]) -> Rejection | None:
    """(6) The rejection for a verification result, or None when the bundle is accepted."""
    report = result["report"]
    failed = _failed_checks(report)
    key = next((r for r in report["results"] if r["name"] == KEY_CHECK), None)
    if not failed and key is not None and key["status"] == "PASS":
        return None
    sha = report["bundle"]["sha256"]
    if failed and all(c.name == KEY_CHECK for c in failed):
        return reject(403, f"signing key not accepted: {failed[0].reason}", bundle_sha256=sha,
                      failed_checks=failed, verify_report=report)
    if not failed:
        return reject(403, "signing key not accepted: " + (key["reason"] if key else "no trusted-key check ran"),
                      bundle_sha256=sha, verify_report=report)
    names = ", ".join(c.name for c in failed)
    return reject(422, f"the bundle does not verify: {len(failed)} check(s) failed ({names}): {failed[0].reason}",
                  bundle_sha256=sha, failed_checks=failed, verify_report=report)


class Submissions:
    def __init__(self, settings: Settings, store: Store, pool: VerifierPool):
        self.settings, self.store, self.pool = settings, store, pool
        self.limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst)
        self.verifying: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def handle(self, request: Request) -> tuple[int, SubmissionOut]:
        path, _size = await receive_upload(request, self.settings.incoming_dir, self.settings.max_upload_bytes)  # (1)
        try:
            return await self._process(request, path)
        finally:
            path.unlink(missing_ok=True)  # kept nowhere unless moved into bundles/

    async def _process(self, request: Request, path: Path) -> tuple[int, SubmissionOut]:
        seen = await run_in_threadpool(peek, path, self.settings.max_upload_bytes)  # (2)
        if seen.problem:
            raise reject(400, f"not a bundle: {seen.problem}", bundle_sha256=seen.sha256 or None)
        who = f"key:{seen.signer_key_id}" if seen.signer_key_id else \
            f"ip:{request.client.host if request.client else 'unknown'}"
        wait_s = self.limiter.take(who)  # (3)
        if wait_s is not None:
            rejection = reject(429, f"too many submissions from {who.split(':', 1)[0]} {who.split(':', 1)[1][:16]}: "
                               f"at most {self.settings.rate_per_minute:g} per minute; retry in {wait_s:.0f} s")
            rejection.headers["Retry-After"] = str(max(1, round(wait_s)))
            raise rejection
        existing = await run_in_threadpool(self.store.entry, seen.sha256)  # (4)
        if existing is not None:
            return 200, _duplicate(existing)
        return await self._verify_once(seen.sha256, path)  # (5)

    async def _verify_once(self, sha: str, path: Path) -> tuple[int, SubmissionOut]:
        """(5) The first request with this sha256 verifies; identical ones arriving meanwhile share its outcome."""
        shared = self.verifying.get(sha)
        if shared is not None:
            try:
                _status, out = await asyncio.shield(shared)
            except Rejection as first:
                raise Rejection(first.status, first.out, first.headers) from None
            return 200, _duplicate(out.entry) if out.entry else out
        future: asyncio.Future[tuple[int, SubmissionOut]] = asyncio.get_running_loop().create_future()
        self.verifying[sha] = future
        try:
            outcome = await self._verify_and_store(path)
            future.set_result(outcome)
            return outcome
        except Rejection as rejection:
            future.set_exception(rejection)
            raise
        except BaseException as err:
            future.set_exception(reject(503, f"the verification was interrupted ({type(err).__name__}): retry"))
            raise
        finally:
            future.exception()  # retrieved: waiting requests re-raise their own copy
            self.verifying.pop(sha, None)

    async def _verify_and_store(self, path: Path) -> tuple[int, SubmissionOut]:
        keyring = await run_in_threadpool(self.store.keyring)
        try:
            result = await asyncio.wrap_future(self.pool.submit(Job(str(path), keyring)))
        except (VerificationTimeout, WorkerCrashed) as err:
            raise reject(422, f"rejected: {err}") from err
        rejection = _verdict(result)  # (6)
        if rejection is not None:
            raise rejection
        return await run_in_threadpool(self._store, path, result)  # (7)

    def _store(self, path: Path, result: dict[str, Any]) -> tuple[int, SubmissionOut]:
        fields = result["entry"]
        sha = fields["bundle_sha256"]
        _durable_move(path, self.settings.bundles_dir / f"{sha}.tar")
        entry, created = self.store.add_entry(NewEntry(key_id=result["signer_key_id"], **fields))
        if not created:
            return 200, _duplicate(entry)
        return 201, SubmissionOut(status="accepted", reason=f"verified; signed by team {entry.team}'s key "
                                  f"{entry.key_id[:16]}…", bundle_sha256=sha, entry=entry,
                                  verify_report=fields["verify_report"])


def _duplicate(entry: Any) -> SubmissionOut:
    return SubmissionOut(status="accepted", reason="already on the leaderboard (idempotent re-submission)",
                         duplicate=True, bundle_sha256=entry.bundle_sha256, entry=entry)
