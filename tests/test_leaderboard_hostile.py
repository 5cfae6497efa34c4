"""The leaderboard under attack: every break found on 127.0.0.1, replayed against the real server (SQLite, and
PostgreSQL where the break was the database's), and shown to hold.

Bombs and floods are refused before work or bounded while they are read; a team cannot be locked out by others;
the admin API authenticates before it reads; nothing that could poison the board is stored; a kill -9 anywhere
leaves the database and the bundle store in agreement; one run is one entry; moderators can hide, delete and ban.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import signal
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import run_cli
from synthetic_runs import make_run, variant
from test_leaderboard import AUTH, Server, _create_database, _expect, postgres, sha256  # noqa: F401 - fixture

from distill_kit.bundle.keys import generate_keypair, load_private_key
from distill_kit.bundle.pack import pack_run
from distill_kit.runner.summaries import run_summary

MB = 1 << 20
STREAM = 40  # submissions per kill -9 round


# -- bundles -------------------------------------------------------------------------------------------------
def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def doctored(base: Path, out: Path, name: str, change: Callable[[dict[str, float]], None]) -> Path:
    """A consistent variant of ``base`` whose student scores went through ``change`` (summaries re-derived)."""
    run = variant(base, out, name, 99, 0.5)
    summary = _read(run / "summary.json")
    stages = [_read(run / "stages" / s["stage"] / "summary.json") for s in summary["stages"]]
    for stage in stages:
        scores = stage["outputs"].get("scores")
        if scores and "student" in scores:
            change(scores["student"])
            _write(run / "stages" / stage["stage"] / "summary.json", stage)
    _write(run / "summary.json", run_summary(_read(run / "manifest.resolved.json"), summary["manifest_sha256"],
                                             stages, summary["status"], summary["started_at"], summary["ended_at"],
                                             summary.get("run_window")))
    return run


def bomb_trace(run: Path, stage: str, uncompressed: int) -> None:
    """Replace the stage's trace by a gzip stream of ``uncompressed`` zero bytes (about 1/1000 of that on disk)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * MB
    parts = [packer.compress(block) for _ in range(uncompressed // MB)]
    (run / "stages" / stage / "trace.csv.gz").write_bytes(b"".join(parts) + packer.flush())


def zero_padded(data: bytes, blocks: int = 20) -> bytes:
    return data + b"\0" * (512 * blocks)


def forged(pub_pem: bytes, envelope_text: bytes | None = None) -> bytes:
    """A 10 KB tar holding someone's public key and an envelope whose signature is noise."""
    envelope = {"payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                "signatures": [{"keyid": "", "sig": "AAAA" * 22}]}
    members = [("signer.pub", pub_pem), ("attestation.dsse.json", envelope_text or json.dumps(envelope).encode()),
               ("run/summary.json", b"{}" + b" " * 8000)]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@dataclass
class Kit:
    root: Path
    pubs: dict[str, Path]
    sign: Callable[[Path, str], bytes]
    base: Path
    alpha: bytes  # the base run, signed by team-a
    stream: list[bytes]  # STREAM distinct valid runs, signed by team-a


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("hostile-kit")
    keys = {name: generate_keypair(root / name) for name in ("a", "b", "victim", "stranger")}
    private = {name: load_private_key(pair.private_path) for name, pair in keys.items()}

    def sign(run: Path, signer: str) -> bytes:
        return pack_run(run, root / f"{run.name}.{signer}.{random.random()}.tar", private[signer]).path.read_bytes()

    base = make_run(root / "base")
    stream = [sign(variant(base, root / f"s{i:02d}", f"stream-{i:02d}", 100 + i, 0.3 + i / 100), "a")
              for i in range(STREAM)]
    return Kit(root, {n: p.public_path for n, p in keys.items()}, sign, base, sign(base, "a"), stream)


def _register(server: Server, kit: Kit, names: tuple[str, ...] = ("a", "b", "victim")) -> None:
    for name in names:
        team = {"a": "team-a", "b": "team-b", "victim": "team-victim"}[name]
        response = server.post("/api/admin/keys", headers=AUTH, json={"team": team,
                                                                       "public_key_pem": kit.pubs[name].read_text()})
        assert response.status_code in (200, 201), response.text


@pytest.fixture()
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(*args: str, db: str | None = None, upload_mb: int = 4) -> Server:
        root = tmp_path / f"server{len(started)}"
        server = Server(db or f"sqlite:///{root / 'board.db'}", root / "data", ["--max-upload-mb", str(upload_mb),
                                                                               *args])
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def _workers(server: Server) -> list[psutil.Process]:
    assert server.proc is not None
    return psutil.Process(server.proc.pid).children(recursive=True)


class PeakRss:
    """The largest RSS any of the server's verifier processes reached while the block ran (polled every 20 ms)."""

    def __init__(self, server: Server):
        self.server, self.peak, self.done = server, 0, threading.Event()

    def _poll(self) -> None:
        while not self.done.is_set():
            for process in _workers(self.server):
                try:
                    self.peak = max(self.peak, process.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.done.set()
        self.thread.join()


# -- refuse before work ----------------------------------------------------------------------------------------
def test_gzip_bomb_and_huge_json_are_bounded(kit: Kit, make_server: Callable[..., Server], tmp_path: Path) -> None:
    bombed = variant(kit.base, tmp_path / "bomb", "bomb", 7, 0.4)
    bomb_trace(bombed, "student", 1500 * MB)  # ~1.5 MB on disk: 1.5 GB when read
    by_stranger, by_team = kit.sign(bombed, "stranger"), kit.sign(bombed, "a")
    assert len(by_team) < 3 * MB
    big = variant(kit.base, tmp_path / "big", "big-json", 8, 0.4)
    stage = _read(big / "stages" / "prerun" / "summary.json")
    stage["padding"] = [[0]] * 12_000_000  # a 60 MB JSON document (a list of lists: ~1 GB once parsed)
    (big / "stages" / "prerun" / "summary.json").write_text(json.dumps(stage))
    huge = kit.sign(big, "a")
    loud = variant(kit.base, tmp_path / "loud", "loud-json", 9, 0.4)
    stage = _read(loud / "stages" / "prerun" / "summary.json")
    stage["stage"] = ["x" * 100] * 60_000  # 6 MB, under the limit, where a string belongs: a 6 MB schema message
    _write(loud / "stages" / "prerun" / "summary.json", stage)
    loud_bundle = kit.sign(loud, "a")

    server = make_server(upload_mb=80)
    _register(server, kit)
    assert server.proc is not None
    front = psutil.Process(server.proc.pid)
    before = front.memory_info().rss
    balloon = forged(kit.pubs["a"].read_bytes(), b"[" + b"[]," * 1_300_000 + b"[]]")  # 4 MB: 1.3 M lists parsed
    for _ in range(5):
        _expect(server.submit(balloon), 422, "not a DSSE envelope")
    assert front.memory_info().rss - before < 50 * MB, "the envelope is never parsed into a balloon"
    with PeakRss(server) as rss:
        started = time.monotonic()
        _expect(server.submit(by_stranger), 403, "not among the trusted keys")  # from the envelope alone
        assert time.monotonic() - started < 5
        body = _expect(server.submit(by_team), 422, "over 16777216 bytes uncompressed")
        assert len(json.dumps(body)) < 64_000
        for bundle in (huge, loud_bundle):
            response = server.submit(bundle)
            _expect(response, 422, "does not verify")
            assert len(response.content) < 64_000, f"the error answer is {len(response.content):,} bytes"
    assert rss.peak < 200 * MB, f"a verifier reached {rss.peak / MB:.0f} MB"
    assert server.stored() == set() and server.incoming() == []
    print(f"\nbomb, 60 MB JSON and a 6 MB schema message refused; verifier peak RSS {rss.peak / MB:.0f} MB")


def test_the_worker_memory_limit_holds_and_the_worker_is_replaced(kit: Kit, make_server: Callable[..., Server],
                                                                  tmp_path: Path) -> None:
    """The reading limits opened wide (a 2 GB trace read): the worker's own 512 MB limit is what stops the bomb."""
    bombed = variant(kit.base, tmp_path / "bomb", "bomb", 7, 0.4)
    bomb_trace(bombed, "student", 1500 * MB)
    server = make_server("--max-trace-mb", "2000", "--verify-workers", "1")
    _register(server, kit)
    with PeakRss(server) as rss:
        _expect(server.submit(kit.sign(bombed, "a")), 422, "the verifier ran out of its 512 MB memory limit")
    assert rss.peak < 520 * MB, f"a verifier reached {rss.peak / MB:.0f} MB"
    response = server.submit(kit.alpha)  # a fresh worker took over
    assert response.status_code == 201, response.text
    print(f"\nbomb with wide reading limits: worker peak RSS {rss.peak / MB:.0f} MB, refused, worker replaced")


def test_the_worker_cpu_limit_holds(kit: Kit, make_server: Callable[..., Server], tmp_path: Path) -> None:
    """A trace that is cheap to send and slow to parse (15 MB of CSV rows) meets a 1 s CPU-time limit."""
    slow = variant(kit.base, tmp_path / "slow", "slow", 9, 0.4)
    rows = "".join(f"{i * 0.1:.1f},1,{i % 7}\n" for i in range(1_200_000))
    (slow / "stages" / "student" / "trace.csv.gz").write_bytes(gzip.compress(("t,attempt,x\n" + rows).encode(), 1))
    server = make_server("--verify-cpu-s", "1", "--verify-workers", "1")
    _register(server, kit)
    _expect(server.submit(kit.sign(slow, "a")), 422, "the verifier ran out of its 1 s CPU-time limit")
    assert server.submit(kit.alpha).status_code == 201  # a fresh worker, a fresh CPU budget


# -- rate limits -----------------------------------------------------------------------------------------------
def test_nobody_can_lock_a_team_out(kit: Kit, make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server("--rate-per-minute", "1", "--rate-burst", "2", "--ip-rate-per-minute", "1",
                         "--ip-rate-burst", "5")
    _register(server, kit)
    attack = forged(kit.pubs["victim"].read_bytes())
    answers = [server.submit(attack).status_code for _ in range(8)]  # from 127.0.0.1, twice a second and more
    assert answers[:5] == [422] * 5 and set(answers[5:]) == {429}, answers
    genuine = kit.sign(variant(kit.base, tmp_path / "victim", "victim-run", 3, 0.6), "victim")
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60) as victim:
        response = victim.post(server.url + "/api/submissions", content=genuine)
    assert response.status_code == 201, response.text  # the victim's key was never charged for the forgeries
    fresh = kit.sign(kit.base, "stranger")  # a fresh key per upload does not escape the address's limit
    _expect(server.submit(fresh), 429, "too many submissions from address 127.0.0.1")


# -- admin -----------------------------------------------------------------------------------------------------
def test_admin_authenticates_before_reading_the_body(make_server: Callable[..., Server]) -> None:
    server = make_server()
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    before = process.memory_info().rss

    def body() -> Iterator[bytes]:
        chunk = b"x" * MB
        for _ in range(300):
            yield chunk

    for headers, status in (({}, 401), (AUTH, 413)):
        try:
            response = httpx.post(server.url + "/api/admin/keys", content=body(), timeout=60,
                                  headers={**headers, "Content-Length": str(300 * MB),
                                           "Content-Type": "application/json"})
            assert response.status_code == status, response.text
        except httpx.HTTPError:
            pass  # the server answered and closed while the client was still sending: refused either way
    chunked = httpx.post(server.url + "/api/admin/keys", content=body(), headers=AUTH, timeout=60)
    assert chunked.status_code == 413 and "at most 65,536 bytes" in chunked.text
    growth = process.memory_info().rss - before
    assert growth < 50 * MB, f"the server grew {growth / MB:.0f} MB"
    print(f"\n300 MB admin bodies refused; server RSS growth {growth / MB:.1f} MB")


# -- input that cannot poison the board ------------------------------------------------------------------------
POISON = {
    "3000 tasks": (lambda s: s.update({f"task{i:04d}": 0.5 for i in range(3000)}), 422, "tasks (at most 64)"),
    # on a task with no per-sample records (on tiny_task the quality check already FAILs the recomputation), the
    # figures' own bound answers: finite numbers only
    "Infinity": (lambda s: s.update({"other_task": float("inf")}), 422, "only finite numbers"),
    "NaN": (lambda s: s.update({"tiny_task": float("nan")}), 422, "do not recompute"),  # NaN != NaN: verify FAILs
    "100,000-char task": (lambda s: s.update({"t" * 100_000: 0.5}), 422, "100,000 characters long"),
    "NUL": (lambda s: s.update({"tiny\0task": 0.5}), 422, "U+0000"),
    "bidi override": (lambda s: s.update({"tiny\u202etask": 0.5}), 422, "U+202E"),
}


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_poison_is_refused_before_anything_is_stored(db: str, kit: Kit, make_server: Callable[..., Server],
                                                     request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = _create_database(request.getfixturevalue("postgres"), "poison") if db == "postgres" else None
    server = make_server(db=url)
    _register(server, kit)
    for index, (what, (change, status, words)) in enumerate(POISON.items()):
        bundle = kit.sign(doctored(kit.base, tmp_path / f"p{index}", f"poison-{index}", change), "a")
        _expect(server.submit(bundle), status, words)
        assert server.stored() == set() and server.incoming() == [], f"{what}: a file was left behind"
    assert server.submit(kit.alpha).status_code == 201
    assert server.get("/api/entries").json()["count"] == 1


# -- nothing half-stored ---------------------------------------------------------------------------------------
def _agree(server: Server) -> None:
    """Every stored file has exactly one visible entry; every entry has its file; nothing left in incoming/."""
    entries = [e["bundle_sha256"] for e in server.entries()]
    assert len(entries) == len(set(entries))
    assert set(entries) == server.stored(), (set(entries) ^ server.stored())
    assert server.incoming() == []


def _stream_and_kill(server: Server, bundles: list[bytes], kill_after: int, threads: int = 4) -> int:
    """Send ``bundles`` from ``threads`` clients at once; SIGKILL the server once ``kill_after`` were answered
    (the others in flight: uploading, verifying, storing). Returns how many were answered."""
    answered, lock = [0], threading.Lock()

    def send(part: list[bytes]) -> None:
        with httpx.Client(timeout=30) as client:
            for data in part:
                try:
                    client.post(server.url + "/api/submissions", content=data)
                except httpx.HTTPError:
                    return
                with lock:
                    answered[0] += 1

    workers = [threading.Thread(target=send, args=(bundles[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    while answered[0] < kill_after and any(w.is_alive() for w in workers):
        time.sleep(0.001)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    server.proc = None
    for worker in workers:
        worker.join()
    return answered[0]


def test_kill_9_anywhere_leaves_db_and_store_in_agreement(kit: Kit, make_server: Callable[..., Server]) -> None:
    server = make_server("--rate-per-minute", "100000", "--rate-burst", "10000", "--ip-rate-per-minute", "100000",
                         "--ip-rate-burst", "10000")
    _register(server, kit)
    rng = random.Random(5)
    kills = []
    for _round in range(3):  # a 40-submission stream each round, killed at a random point of it
        kill_after = rng.randint(1, STREAM - 1)
        kills.append(_stream_and_kill(server, rng.sample(kit.stream, STREAM), kill_after))
        server.start()  # the reconciler runs before the first request
        _agree(server)
    for data in kit.stream:  # the stream completes after the last restart
        assert server.submit(data).status_code in (200, 201)
    _agree(server)
    assert server.stored() == {sha256(b) for b in kit.stream}
    repairs = [m["reason"] for m in server.get("/api/admin/moderation", headers=AUTH).json()
               if m["action"] == "reconcile"]
    print(f"\nkill -9 after {kills} of {STREAM} answers: DB and store agree every time; "
          f"reconciler: {repairs or 'nothing to repair'}")
    _each_crash_state_is_settled(server, kit)


def _each_crash_state_is_settled(server: Server, kit: Kit) -> None:
    """The states a kill leaves between the steps, made on purpose: pending with its file (killed before 'stored'),
    pending without (killed before the rename), a file without an entry (killed inside a delete)."""
    import sqlite3

    complete, lost = sorted(server.stored())[:2]
    server.stop()
    bundles = server.data_dir / "bundles"
    (bundles / f"{lost}.tar").unlink()
    (bundles / f"{'f' * 64}.tar").write_bytes(b"orphan")
    with sqlite3.connect(server.db.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE entries SET state = 'pending' WHERE bundle_sha256 IN (?, ?)", (complete, lost))
    server.start()
    _agree(server)
    assert complete in server.stored() and lost not in server.stored() and "f" * 64 not in server.stored()
    log = server.get("/api/admin/moderation", headers=AUTH).json()
    assert log[-1]["reason"] == "start-up repair: 1 completed, 1 dropped, 1 orphans"
    assert server.submit(next(b for b in kit.stream if sha256(b) == lost)).status_code == 201


# -- one run, one entry ----------------------------------------------------------------------------------------
def test_one_run_is_one_entry(kit: Kit, make_server: Callable[..., Server]) -> None:
    server = make_server()
    _register(server, kit)
    first = server.submit(kit.alpha)
    assert first.status_code == 201
    sha = first.json()["bundle_sha256"]
    assert server.submit(kit.alpha).json()["duplicate"] is True  # the same bytes: idempotent 200
    for other in (kit.sign(kit.base, "b"), zero_padded(kit.alpha)):
        body = _expect(server.submit(other), 409, f"already on the leaderboard: it is entry {sha} (team team-a)")
        assert body["duplicate_of"] == sha
    assert server.get("/api/entries").json()["count"] == 1 and server.stored() == {sha}
    report = server.get(f"/api/entries/{sha}").json()["verify_report"]
    assert report["bundle"]["path"] == f"{sha}.tar" and "incoming" not in json.dumps(report)


# -- moderation ------------------------------------------------------------------------------------------------
def test_moderators_hide_delete_and_ban(kit: Kit, make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server()
    _register(server, kit)
    keep, drop = kit.alpha, kit.stream[0]
    shas = [server.submit(b).json()["bundle_sha256"] for b in (keep, drop)]
    hidden = server.post(f"/api/admin/entries/{shas[0]}/hide", headers=AUTH, json={"reason": "spam"})
    assert hidden.status_code == 200 and hidden.json()["action"] == "hide"
    assert server.post(f"/api/admin/entries/{shas[0]}/hide", json={"reason": "x"}).status_code == 401
    assert [e["bundle_sha256"] for e in server.entries()] == [shas[1]]
    assert shas[0] not in server.get("/api/pareto/tiny_task").text
    assert server.get(f"/api/entries/{shas[0]}").status_code == 404
    assert "kd_32b_1b" not in server.get("/").text and "stream-00" in server.get("/").text
    args = ("--db", server.db, "--data-dir", str(server.data_dir))
    deleted = run_cli("leaderboard", "delete", shas[1], "--reason", "copied run", *args)
    assert deleted.returncode == 0 and "deleted: entry" in deleted.stdout, deleted.output
    assert server.entries() == [] and server.stored() == {shas[0]}  # the hidden one's file stays
    _expect(server.submit(drop), 409, "removed by the moderators (copied run)")
    key_id = next(k["key_id"] for k in server.get("/api/admin/keys", headers=AUTH).json() if k["team"] == "team-b")
    banned = run_cli("leaderboard", "ban-key", key_id, "--reason", "cheating", *args)
    assert banned.returncode == 0 and "banned: key" in banned.stdout, banned.output
    _expect(server.submit(kit.sign(kit.base, "b")), 403, "revoked: cheating")
    log = server.get("/api/admin/moderation", headers=AUTH).json()
    assert [(m["action"], m["reason"]) for m in log] == [("hide", "spam"), ("delete", "copied run"),
                                                          ("ban-key", "cheating")]
    assert all(m["at"] for m in log)


def test_quality_warnings_are_refused() -> None:
    """A ``quality`` or ``rehearsal`` check that WARNs is a refusal on the board (the verify CLI only warns)."""
    from distill_kit.leaderboard.submissions import _verdict

    def result(status: str, name: str) -> dict[str, Any]:
        return {"report": {"bundle": {"sha256": "0" * 64}, "results": [
            {"name": "trusted-key", "status": "PASS", "reason": "ok"},
            {"name": name, "status": status, "reason": "task mmlu: no per-sample evidence (unverifiable)"}]}}

    refused = _verdict(result("WARN", "quality"))
    assert refused is not None and refused.status == 422 and "unverifiable" in refused.out.reason
    assert _verdict(result("WARN", "measurement")) is None and _verdict(result("PASS", "quality")) is None


def test_gunzip_reads_in_chunks() -> None:
    """The trace reader never asks for a buffer of its whole limit up front (the bomb's 1 GB allocation)."""
    from distill_kit.bundle.context import _gunzip_bounded

    data = gzip.compress(b"t,x\n" + b"1,2\n" * 1000)
    assert _gunzip_bounded(data, 1 << 40) == b"t,x\n" + b"1,2\n" * 1000
    assert _gunzip_bounded(data, 100) is None
    assert hashlib.sha256(_gunzip_bounded(data, 4004) or b"").hexdigest()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_migration_keeps_entries_scrubs_paths_and_refuses_infinity(db: str, request: pytest.FixtureRequest,
                                                                   tmp_path: Path) -> None:
    """A board of schema 0001 (with an entry whose report named the upload path) upgraded to the newest schema."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from distill_kit.leaderboard.config import database_url
    from distill_kit.leaderboard.db import MIGRATIONS, make_engine
    from distill_kit.leaderboard.store import Store

    url = database_url(_create_database(request.getfixturevalue("postgres"), "migrate") if db == "postgres"
                       else f"sqlite:///{tmp_path / 'old.db'}", tmp_path)
    engine, config = make_engine(url), Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text("INSERT INTO teams (id, name, created_at) VALUES (1, 't', :at)"), {"at": "2026-11-01"})
        connection.execute(text("INSERT INTO signing_keys (key_id, team_id, public_key_pem, added_at, revoked) "
                                "VALUES ('k', 1, 'pem', :at, :no)"), {"at": "2026-11-01", "no": False})
        connection.execute(text(
            "INSERT INTO entries (id, bundle_sha256, team_id, key_id, submitted_at, size_bytes, name, pipeline, "
            "manifest_sha256, energy_tier, containerised, methods, summary, stages, verify_report) VALUES (1, 'abc', "
            "1, 'k', :at, 1, 'n', 'kd', 'm', 'estimated', :no, '[]', '{}', '[]', :report)"),
            {"at": "2026-11-01", "no": False, "report": json.dumps({"bundle": {"path": "/srv/incoming/upload-1.tar"}})})
        connection.execute(text("INSERT INTO scores VALUES (1, 'student', 'tiny_task', 0.5)"))
        connection.execute(text(
            "INSERT INTO entries (id, bundle_sha256, team_id, key_id, submitted_at, size_bytes, name, pipeline, "
            "manifest_sha256, energy_tier, containerised, methods, summary, stages, verify_report) VALUES (2, 'inf', "
            "1, 'k', :at, 1, 'n', 'kd', 'm', 'estimated', :no, '[]', '{}', '[]', '{}')"), {"at": "2026-11-01",
                                                                                         "no": False})
        connection.execute(text("INSERT INTO scores VALUES (2, 'student', 'tiny_task', :inf)"), {"inf": float("inf")})
    engine.dispose()
    store = Store(url)
    try:
        assert [e.bundle_sha256 for e in store.entries()] == ["abc"]  # the Infinity entry hidden, not lost
        assert store.entries()[0].scores == {"student": {"tiny_task": 0.5}}  # scores kept through the upgrade
        assert store.entries()[0].sources == {"student": {"tiny_task": None}}  # 0003: the source was not recorded
        assert store.entry_detail("abc").verify_report["bundle"]["path"] == "abc.tar"  # type: ignore[union-attr]
        with pytest.raises(IntegrityError), store.engine.begin() as connection:
            connection.execute(text("INSERT INTO scores (entry_id, model, task, score) VALUES (1, 'student', "
                                    "'other', :inf)"), {"inf": float("inf")})
    finally:
        store.close()
