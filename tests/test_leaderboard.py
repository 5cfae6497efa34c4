"""The leaderboard, end to end: the real server (``distill-kit leaderboard serve``) in a subprocess on 127.0.0.1,
against SQLite and against a throwaway PostgreSQL cluster, with real signed bundles (synthetic, consistent runs
packed by ``pack_run``), the real admin CLI and ``distill-kit submit``, and headless Chromium for the pages.
"""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, assert_no_traceback, run_cli
from synthetic_runs import make_run, variant

from distill_kit.bundle.keys import generate_keypair, load_private_key
from distill_kit.bundle.pack import pack_run

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD_MB = 1
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VALID, TAMPERED, UNSIGNED, UNREGISTERED, GARBAGE = 30, 25, 15, 15, 15
DUPLICATES = 200 - VALID - TAMPERED - UNSIGNED - UNREGISTERED - GARBAGE  # 100


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server ----------------------------------------------------------------------------------------------
@dataclass
class Server:
    db: str
    data_dir: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.port = free_port()
        self.log = self.data_dir.parent / f"server-{self.port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "distill_kit", "leaderboard", "serve", "--db", self.db, "--data-dir",
                   str(self.data_dir), "--port", str(self.port), "--max-upload-mb", str(MAX_UPLOAD_MB), *self.args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "DISTILL_KIT_LEADERBOARD_TOKEN": TOKEN})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server did not answer within 120 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kwargs)

    def submit(self, data: bytes) -> httpx.Response:
        return self.post("/api/submissions", content=data, headers={"Content-Type": "application/octet-stream"})

    def entries(self) -> list[dict[str, Any]]:
        return self.get("/api/entries", params={"limit": 1000}).json()["entries"]

    def stored(self) -> set[str]:
        return {p.name.removesuffix(".tar") for p in (self.data_dir / "bundles").glob("*.tar")}

    def incoming(self) -> list[str]:
        return [p.name for p in (self.data_dir / "incoming").iterdir()]


# -- PostgreSQL, a throwaway cluster -------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Any:
    """A PostgreSQL cluster in a temporary folder (as the postgres user when running as root); its URL."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="distill-kit-pg-"))  # not under pytest's 0700 tmp: postgres must enter
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data, port = root / "data", free_port()
    env = {**os.environ, "HOME": str(root), "LC_ALL": "C"}
    run = {"check": True, "capture_output": True, "env": env, "cwd": root, **as_user}
    subprocess.run([pg_bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"], **run)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([pg_bin / "pg_ctl", "-D", data, "-l", root / "pg.log", "-o", options, "-w", "-t", "60",
                    "start"], **run)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([pg_bin / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], **{**run, "check": False})
        shutil.rmtree(root, ignore_errors=True)


def _create_database(base_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


# -- bundles -------------------------------------------------------------------------------------------------
def _rewrite(data: bytes, change: Any) -> bytes:
    """The bundle's (name, bytes) members passed through ``change``, written as a plain tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in change(members):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def tampered(data: bytes) -> bytes:
    def change(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return [(n, b.replace(b'"status": "finished"', b'"status": "finishes"', 1) if n == "run/summary.json"
                 else b) for n, b in members]
    return _rewrite(data, change)


def unsigned(data: bytes) -> bytes:
    return _rewrite(data, lambda ms: [(n, b) for n, b in ms if n not in ("attestation.dsse.json", "signer.pub")])


@dataclass
class Kit:
    """Keys (three registered for two teams, one stranger, one to revoke) and bundles (bytes)."""

    root: Path
    pubs: dict[str, Path]
    alpha: bytes  # the first submission, signed by team-a's key
    by_revoked: bytes
    valid: list[bytes]
    tampered: list[bytes]
    unsigned: list[bytes]
    unregistered: list[bytes]
    garbage: list[bytes]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("leaderboard-kit")
    keys = {name: generate_keypair(root / name) for name in ("a1", "a2", "b1", "stranger", "revoked")}
    private = {name: load_private_key(pair.private_path) for name, pair in keys.items()}
    base = make_run(root / "base")

    def pack(run: Path, signer: str) -> bytes:
        return pack_run(run, root / f"{run.name}.{signer}.tar", private[signer]).path.read_bytes()

    runs = [variant(base, root / f"v{i:02d}", f"kd-{i:02d}", i, round(0.30 + 0.02 * i, 2), params_b=(1, 7, 13)[i % 3],
                    baseline=i % 10 == 9) for i in range(VALID + UNREGISTERED)]
    valid = [pack(run, ("a1", "a2", "b1")[i % 3]) for i, run in enumerate(runs[:VALID])]
    rng = random.Random(7)
    return Kit(root=root, pubs={n: p.public_path for n, p in keys.items()}, alpha=pack(base, "a1"),
               by_revoked=pack(runs[0], "revoked"), valid=valid,
               tampered=[tampered(b) for b in valid[:TAMPERED]], unsigned=[unsigned(b) for b in valid[:UNSIGNED]],
               unregistered=[pack(run, "stranger") for run in runs[VALID:]],
               garbage=[rng.randbytes(rng.randint(1, 40_000)) for _ in range(GARBAGE)])


def _register(server: Server, kit: Kit) -> None:
    """Team A's keys through the admin CLI (before the server starts), team B's and the one to revoke by API."""
    for name in ("a1", "a2"):
        result = run_cli("leaderboard", "add-key", "--db", server.db, "--data-dir", str(server.data_dir), "--team",
                         "team-a", "--pub", str(kit.pubs[name]))
        assert result.returncode == 0 and "registered: key" in result.stdout, result.output


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def board(request: pytest.FixtureRequest, kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp(f"board-{request.param}")
    if request.param == "postgres":
        db = _create_database(request.getfixturevalue("postgres"), "leaderboard")
    else:
        db = f"sqlite:///{root / 'board.db'}"
    server = Server(db, root / "data", ["--rate-per-minute", "100000", "--rate-burst", "10000",
                                        "--ip-rate-per-minute", "100000", "--ip-rate-burst", "10000"])
    _register(server, kit)
    server.start()
    for team, name in (("team-b", "b1"), ("team-c", "revoked")):
        response = server.post("/api/admin/keys", headers=AUTH, json={"team": team,
                                                                       "public_key_pem": kit.pubs[name].read_text()})
        assert response.status_code == 201, response.text
    try:
        yield server
    finally:
        server.stop()


# -- tests ---------------------------------------------------------------------------------------------------
def test_submit_then_api_and_pages(board: Server, kit: Kit, tmp_path: Path) -> None:
    bundle = tmp_path / "alpha.tar"
    bundle.write_bytes(kit.alpha)
    first = run_cli("submit", str(bundle), "--to", board.url)
    assert first.returncode == 0 and "accepted: kd_32b_1b for team team-a" in first.stdout, first.output
    again = run_cli("submit", str(bundle), "--to", board.url + "/")
    assert again.returncode == 0 and "already on the leaderboard" in again.stdout, again.output
    multipart = board.post("/api/submissions", files={"bundle": ("x.tar", kit.alpha, "application/x-tar")})
    assert multipart.status_code == 200 and multipart.json()["duplicate"] is True
    sha = sha256(kit.alpha)
    assert sha in board.stored() and (board.data_dir / "bundles" / f"{sha}.tar").read_bytes() == kit.alpha
    assert board.get(f"/api/entries/{sha}/bundle").content == kit.alpha

    detail = board.get(f"/api/entries/{sha}").json()
    assert detail["team"] == "team-a" and detail["pipeline"] == "kd" and detail["student_params_b"] == 1
    assert [s["stage"] for s in detail["stages"]] == ["prerun", "teacher", "student", "eval"]
    assert detail["stages"][2]["attempts"] == 2 and detail["stages"][0]["energy"]["gpu"]["method"] == "counter"
    assert detail["tier"]["containerised"] is True and detail["tier"]["energy"] in ("measured", "estimated")
    assert {r["name"]: r["status"] for r in detail["verify_report"]["results"]}["trusted-key"] == "PASS"
    assert detail["scores"]["student"]["tiny_task"] == 0.55
    assert detail["sources"]["student"]["tiny_task"] == "full"  # the whole tiny task: ranked with full scores
    assert "partial=1" in board.get("/", params={"task": "tiny_task"}).text
    assert "never ranked with full-benchmark ones" in board.get("/", params={"task": "tiny_task", "partial": "1"}).text
    for query, expected in (({"pipeline": "kd"}, 1), ({"pipeline": "baseline_sft"}, 0), ({"task": "tiny_task"}, 1),
                            ({"task": "tiny_task", "partial": "true"}, 0),
                            ({"task": "other"}, 0), ({"student_params_b": 1}, 1), ({"min_params_b": 2}, 0)):
        assert board.get("/api/entries", params=query).json()["count"] == expected, query
    pareto = board.get("/api/pareto/tiny_task").json()
    assert pareto["frontier"] == [sha] and pareto["points"][0]["on_frontier"] is True
    spec = board.get("/openapi.json").json()
    assert {"/api/submissions", "/api/entries", "/api/entries/{sha256}", "/api/pareto/{task}",
            "/api/admin/keys"} <= set(spec["paths"])
    assert board.get("/api/entries/" + "0" * 64).status_code == 404
    assert board.get("/api/entries/not-a-sha").status_code == 422
    if "sqlite" in board.db:
        _pages_in_chromium(board, sha, tmp_path)


def _pages_in_chromium(board: Server, sha: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for path, shot in (("/?task=tiny_task", "ranking"), ("/pareto", "pareto"), (f"/entries/{sha}", "entry")):
                response = page.goto(board.url + path, wait_until="load")
                assert response is not None and response.status == 200
                widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
                assert widths and all(w > 0 for w in widths), (path, widths)
                page.screenshot(path=str(tmp_path / f"{shot}.png"), full_page=True)
            page.goto(board.url + "/?task=tiny_task")
            assert page.locator("table tbody tr").count() == 1
            assert "kd_32b_1b" in page.locator("table").inner_text()
            assert page.locator(".tier").first.inner_text() in ("measured (counter/RAPL)", "estimated")
        finally:
            browser.close()
    assert all((tmp_path / f"{s}.png").stat().st_size > 1000 for s in ("ranking", "pareto", "entry"))


def _expect(response: httpx.Response, status: int, words: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert body["status"] == "rejected" and words in body["reason"], body["reason"]
    return body


def test_bad_uploads_get_a_4xx_with_a_reason(board: Server, kit: Kit) -> None:
    before = board.stored()
    body = _expect(board.submit(kit.unsigned[0]), 422, "it is not signed")
    assert [c["name"] for c in body["failed_checks"]] == ["signature"]
    body = _expect(board.submit(kit.tampered[0]), 422, "does not verify")
    assert "integrity" in {c["name"] for c in body["failed_checks"]}
    _expect(board.submit(kit.unregistered[0]), 403, "not among the trusted keys")
    revoked_id = board.get("/api/admin/keys", headers=AUTH).json()
    revoked_id = next(k["key_id"] for k in revoked_id if k["team"] == "team-c")
    response = board.post(f"/api/admin/keys/{revoked_id}/revoke", headers=AUTH, json={"reason": "laptop stolen"})
    assert response.status_code == 200 and response.json()["revoked"] is True
    _expect(board.submit(kit.by_revoked), 403, "revoked: laptop stolen")
    _expect(board.submit(b"\0" * (MAX_UPLOAD_MB * 2**20 + 1)), 413, "over the limit")
    chunked = board.post("/api/submissions", content=iter([b"x" * 2**16] * (MAX_UPLOAD_MB * 16 + 1)))
    _expect(chunked, 413, "over the limit")
    _expect(board.submit(kit.garbage[0]), 400, "not a bundle")
    _expect(board.submit(b""), 400, "empty upload")
    _expect(board.post("/api/submissions", content=b"--nope\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=xyz"}), 400, "multipart")
    _expect(board.post("/api/submissions", files={"note": (None, "no file")}), 400, "multipart")
    assert board.stored() == before and board.incoming() == []  # a rejected bundle is kept nowhere
    assert board.get("/api/admin/keys").status_code == 401
    assert board.get("/api/admin/keys", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_submit_cli_exit_codes(board: Server, kit: Kit, tmp_path: Path) -> None:
    bad = tmp_path / "tampered.tar"
    bad.write_bytes(kit.tampered[1])
    result = run_cli("submit", str(bad), "--to", board.url)
    assert result.returncode == 1 and "rejected (HTTP 422)" in result.stdout and "[FAIL] integrity" in result.stdout
    junk = tmp_path / "junk.tar"
    junk.write_bytes(kit.garbage[1])
    assert run_cli("submit", str(junk), "--to", board.url).returncode == 2
    assert run_cli("submit", str(tmp_path / "missing.tar"), "--to", board.url).returncode == 2
    assert run_cli("submit", str(bad), "--to", "ftp://example").returncode == 2
    unreachable = run_cli("submit", str(bad), "--to", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "could not reach" in unreachable.stdout
    for each in (result, unreachable):
        assert_no_traceback(each)


def test_200_concurrent_submissions_then_restart(board: Server, kit: Kit) -> None:
    valid = {sha256(b) for b in kit.valid}
    invalid = [*kit.tampered, *kit.unsigned, *kit.unregistered, *kit.garbage]
    duplicates = [kit.valid[i % VALID] for i in range(DUPLICATES)]
    jobs = [("valid", b) for b in kit.valid] + [("dup", b) for b in duplicates] + [("invalid", b) for b in invalid]
    random.Random(11).shuffle(jobs)
    assert len(jobs) == 200
    before = {e["bundle_sha256"] for e in board.entries()}
    health: list[float] = []
    health_failures: list[str] = []
    done = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                start = time.monotonic()
                try:
                    if client.get(board.url + "/api/health").status_code != 200:
                        health_failures.append("status")
                except httpx.HTTPError as err:
                    health_failures.append(repr(err))
                health.append(time.monotonic() - start)
                time.sleep(0.05)

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=40)) as client:
        def send(job: tuple[str, bytes]) -> tuple[str, str, int, dict[str, Any]]:
            kind, data = job
            response = client.post(board.url + "/api/submissions", content=data)
            return kind, sha256(data), response.status_code, response.json()

        poller = threading.Thread(target=poll_health)
        poller.start()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(send, jobs))
        elapsed = time.monotonic() - started
        done.set()
        poller.join()

    statuses = Counter((kind, status) for kind, _, status, _ in results)
    created = Counter(sha for kind, sha, status, _ in results if status == 201)
    assert all(status in (200, 201) and body["status"] == "accepted" for kind, _, status, body in results
               if kind != "invalid"), statuses
    assert all(400 <= status < 500 and body["reason"] for kind, _, status, body in results if kind == "invalid"), \
        statuses
    assert set(created) == valid and set(created.values()) == {1}, "every valid bundle created exactly once"
    entries = [e["bundle_sha256"] for e in board.entries()]
    assert len(entries) == len(set(entries)) and set(entries) == before | valid
    assert board.stored() == before | valid and board.incoming() == []
    assert not health_failures and len(health) > 5
    print(f"\n[{board.db.split(':')[0]}] 200 submissions in {elapsed:.1f} s ({200 / elapsed:.1f}/s); "
          f"statuses {dict(statuses)}; /api/health answered {len(health)} times, max {max(health) * 1000:.0f} ms, "
          f"median {sorted(health)[len(health) // 2] * 1000:.0f} ms")
    assert max(health) < 10.0, "the server must keep answering while it verifies"

    snapshot = {e["bundle_sha256"]: e for e in board.entries()}
    board.stop()
    board.start()  # same database, same data dir
    after = {e["bundle_sha256"]: e for e in board.entries()}
    assert after == snapshot and board.stored() == set(snapshot)
    some = sorted(valid)[0]
    assert sha256(board.get(f"/api/entries/{some}/bundle").content) == some
    assert board.submit(next(b for b in kit.valid if sha256(b) == some)).json()["duplicate"] is True


def test_rate_limit_and_verification_time_limit(kit: Kit, tmp_path: Path) -> None:
    """A server that allows 2 submissions at once per registered key, 6 per client address, 1 ms per verification."""
    server = Server(f"sqlite:///{tmp_path / 'strict.db'}", tmp_path / "data",
                    ["--rate-per-minute", "1", "--rate-burst", "2", "--ip-rate-per-minute", "1", "--ip-rate-burst",
                     "6", "--verify-timeout-s", "0.001", "--verify-workers", "1"])
    _register(server, kit)
    server.start()
    try:
        _expect(server.submit(kit.alpha), 422, "verification took longer than 0.001 s")
        _expect(server.submit(kit.alpha), 422, "verification took longer than")
        limited = server.submit(kit.alpha)
        _expect(limited, 429, "too many submissions from key")
        assert int(limited.headers["Retry-After"]) > 0
        _expect(server.submit(kit.unsigned[0]), 422, "not signed")  # counts against the address only
        _expect(server.submit(kit.unsigned[1]), 422, "not signed")
        _expect(server.submit(kit.unsigned[2]), 422, "not signed")
        _expect(server.submit(kit.unsigned[3]), 429, "too many submissions from address 127.0.0.1")
        assert server.get("/api/health").json()["entries"] == 0 and server.stored() == set()
    finally:
        server.stop()


def test_subset_and_fixture_scores_are_never_ranked_with_full_ones(tmp_path: Path) -> None:
    """A task's ranking and frontier hold full-benchmark scores only; the subset, fixture and unrecorded ones are
    ranked apart when asked, and marked on the page. The source comes from the bundle's quality_provenance."""
    from distill_kit.leaderboard.pages import RankingView, ranking_page
    from distill_kit.leaderboard.store import EntryFilter, NewEntry, Store
    from distill_kit.leaderboard.verifier import extract

    run = make_run(tmp_path / "run")
    bundle = pack_run(run, tmp_path / "run.tar", load_private_key(generate_keypair(tmp_path / "k").private_path))
    fields = extract(bundle.path, {"bundle": {"sha256": "0" * 64, "size_bytes": 1}})
    assert fields["sources"] == {"teacher": {"tiny_task": "full"}, "student": {"tiny_task": "full"}}

    store = Store(f"sqlite:///{tmp_path / 'board.db'}")
    key, _ = store.add_key("team", (tmp_path / "k.pub").read_bytes())

    def add(i: int, score: float, source: str | None) -> None:
        digest = f"{i:064x}"
        new = NewEntry(bundle_sha256=digest, key_id=key.key_id, size_bytes=1, name=f"e{i}", pipeline="kd",
                       manifest_sha256=digest, kit_version="x", student_params_b=1.0, total_energy_j=100.0 + i,
                       energy_above_idle_j=None, teacher_energy_j=None, wall_time_s=1.0, j_per_trained_token=None,
                       energy_tier="measured", containerised=False, methods=["counter"], summary={}, stages=[],
                       verify_report={}, scores={"student": {"gsm8k": score}}, run_sha256=digest,
                       sources={"student": {"gsm8k": source}} if source else {})
        store.add_pending(new)
        store.mark_stored(digest)

    for i, score, source in ((1, 0.40, "full"), (2, 0.90, "fixture"), (3, 0.60, "subset"), (4, 0.50, "full"),
                             (5, 0.95, None)):
        add(i, score, source)
    try:
        assert [e.name for e in store.entries(EntryFilter(task="gsm8k"))] == ["e4", "e1"]
        partial = EntryFilter(task="gsm8k", partial=True)
        assert [e.name for e in store.entries(partial)] == ["e5", "e2", "e3"]
        assert len(store.entries(EntryFilter())) == 5  # the plain listing (by energy) holds every entry
        assert {p.name for p in store.pareto("gsm8k").points} == {"e1", "e4"}
        assert {p.name for p in store.pareto_lean("gsm8k").points} == {"e1", "e4"}
        html = ranking_page(RankingView(entries=store.entries(partial), f=partial, page=1, has_next=False,
                                        tasks=["gsm8k"], pipelines=["kd"]))
        assert '0.900 <span class="src fixture">fixture</span>' in html
        assert '<span class="src subset">subset</span>' in html and "source not recorded" in html
        assert "never ranked with full-benchmark ones" in html
        full = ranking_page(RankingView(entries=store.entries(EntryFilter(task="gsm8k")), f=EntryFilter(task="gsm8k"),
                                        page=1, has_next=False, tasks=["gsm8k"], pipelines=["kd"]))
        assert 'class="src' not in full.split("<table")[1] and "partial=1" in full
    finally:
        store.close()
