"""The leaderboard's serving half under attack, on the real server (``distill-kit leaderboard serve``, uvicorn,
SQLite) on 127.0.0.1: poisoned names, a 3,000-task entry, slow clients, concurrent PNG renders, internal errors.

Ingest refuses control characters and oversized task lists at submission; the hostile entries here are written
straight into the store (``Store.add_pending`` + ``mark_stored``): the 3,000-task one is a signed bundle verified
and extracted as the server's verifier does, the others are clones of a real accepted entry. The pages must hold
even when such an entry is in the database (defence in depth).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO
from synthetic_runs import make_run, variant, with_scores
from test_leaderboard import Server

from distill_kit.bundle.keys import generate_keypair, load_private_key
from distill_kit.bundle.pack import pack_run
from distill_kit.leaderboard.store import NewEntry, Store
from distill_kit.leaderboard.verifier import Job, verify_job

HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 2.0, 3.0
SERVE_ARGS = ["--rate-per-minute", "100000", "--rate-burst", "10000", "--header-timeout-s", str(HEADER_TIMEOUT_S),
              "--body-timeout-s", str(BODY_TIMEOUT_S), "--render-workers", "2"]
MANY_TASKS = 3000
HOSTILE_NAMES = {"rlo": "safe\u202eexe.gpj", "nul": "nul\x00byte", "esc": "esc\x1b[31mred", "isolate": "a\u2066b\u2069",
                 "alpha": "$\\alpha^{", "frac": "$\\frac{a}{b}$", "script": "<script>alert(1)</script>",
                 "long": "L" * 5000}
RAW_CONTROLS = ("\u202e", "\x00", "\x1b", "\u2066", "\u2069")
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Board:
    server: Server
    tmp: Path
    hostile: dict[str, str]  # kind -> bundle sha256 of an entry named HOSTILE_NAMES[kind]
    many: str  # the entry with MANY_TASKS tasks
    broken: str  # an entry whose stored stage list is corrupt


def _clone(template: Any, key_id: str, name: str, scores: dict[str, dict[str, float]],
           stages: list[dict[str, Any]] | None = None) -> NewEntry:
    sha = sha256(f"{name}|{sorted(scores.get('student', {}))[:3]}".encode() + bytes(len(scores.get("student", {}))))
    return NewEntry(bundle_sha256=sha, key_id=key_id, size_bytes=template.size_bytes, name=name,
                    pipeline=template.pipeline, manifest_sha256=sha, kit_version="0", student_params_b=1.0,
                    total_energy_j=template.total_energy_j, energy_above_idle_j=template.energy_above_idle_j,
                    teacher_energy_j=template.teacher_energy_j, wall_time_s=template.wall_time_s,
                    j_per_trained_token=template.j_per_trained_token, energy_tier=template.tier.energy,
                    containerised=template.tier.containerised, methods=list(template.tier.methods),
                    summary=template.summary, stages=template.stages if stages is None else stages,
                    verify_report=template.verify_report, scores=scores,
                    sources=template.sources)  # the template's full tiny_task: ranked with the others


def _insert(store: Store, entry: NewEntry) -> Any:
    """An entry put straight into the store, as ingest would leave it once stored (pending, then stored): the
    pages' own defences are tested with what ingest refuses."""
    out, _ = store.add_pending(entry)
    store.mark_stored(entry.bundle_sha256)
    return out


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("serving")
    pair = generate_keypair(tmp / "team")
    private = load_private_key(pair.private_path)
    base = make_run(tmp / "base")
    bundle = pack_run(base, tmp / "base.tar", private).path
    many_run = with_scores(variant(base, tmp / "many", "many-tasks", 3, 0.5),
                           {f"task-{i:04d}-" + "x" * 40: 0.5 + (i % 7) / 100 for i in range(MANY_TASKS)})
    many_bundle = pack_run(many_run, tmp / "many.tar", private).path
    db = f"sqlite:///{tmp / 'board.db'}"
    store = Store(db)
    key, _ = store.add_key("team-$\\frac{a}{b}$", pair.public_path.read_bytes())
    server = Server(db, tmp / "data", SERVE_ARGS).start()
    try:
        response = server.submit(bundle.read_bytes())
        assert response.status_code == 201, response.text
        template = store.entry_detail(response.json()["bundle_sha256"])
        assert template is not None
        hostile = {}
        for i, (kind, name) in enumerate(HOSTILE_NAMES.items()):
            entry = _clone(template, key.key_id, name, {"student": {"tiny_task": 0.3 + i / 100, name: 0.5}})
            hostile[kind] = _insert(store, entry).bundle_sha256
        verified = verify_job(Job(str(many_bundle), store.keyring()))  # what the server's verifier would store
        assert verified["ok"], verified["report"]
        many = _insert(store, NewEntry(key_id=verified["signer_key_id"], **verified["entry"])).bundle_sha256
        corrupt = [{"stage": "student", "energy": "not a mapping"}]
        broken = _insert(store, _clone(template, key.key_id, "broken", {"student": {"tiny_task": 0.1}},
                                        corrupt)).bundle_sha256
        store.close()
        yield Board(server, tmp, hostile, many, broken)
    finally:
        server.stop()


def _no_raw_controls(text: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, f"raw U+{ord(char):04X} in the page"


# -- pages that cannot be poisoned ---------------------------------------------------------------------------
def test_3000_task_entry_leaves_pages_small_and_fast(board: Board) -> None:
    server = board.server
    started = time.monotonic()
    pareto = httpx.get(server.url + "/pareto", timeout=30)
    elapsed = time.monotonic() - started
    assert pareto.status_code == 200 and elapsed < 1.0, f"/pareto took {elapsed:.2f} s"
    assert len(pareto.content) < 150_000, len(pareto.content)
    assert "/tasks" in pareto.text  # the way to the other tasks
    ranking = server.get("/")
    assert ranking.status_code == 200 and len(ranking.content) < 150_000, len(ranking.content)
    chosen = server.get("/pareto", params={"task": f"task-2999-{'x' * 40}"})
    assert chosen.status_code == 200 and "task-2999-" in chosen.text and "task-0000-" not in chosen.text
    for number in range(1, 40):  # the task list, page after page, reaches every task
        listing = server.get("/tasks", params={"page": number})
        assert listing.status_code == 200 and len(listing.content) < 150_000
        if "task-2999-" in listing.text or "next page" not in listing.text:
            break
    assert "task-2999-" in listing.text and number == 31, number  # 3,009 tasks, 100 a page
    entry = server.get(f"/entries/{board.many}")
    assert entry.status_code == 200 and len(entry.content) < 150_000, len(entry.content)
    assert "more tasks" in entry.text
    print(f"\n[{MANY_TASKS} tasks] /pareto {elapsed * 1000:.0f} ms, {len(pareto.content):,} B; / "
          f"{len(ranking.content):,} B; entry page {len(entry.content):,} B")


def test_hostile_names_are_shown_escaped_and_plots_render(board: Board) -> None:
    server = board.server
    ranking = server.get("/", params={"task": "tiny_task"})
    assert ranking.status_code == 200
    _no_raw_controls(ranking.text)
    assert "safe\\u202eexe.gpj" in ranking.text and "nul\\u0000byte" in ranking.text
    assert "esc\\u001b[31mred" in ranking.text and "<script>" not in ranking.text
    assert "L" * 200 not in ranking.text  # names truncated
    for kind, sha in board.hostile.items():
        page = server.get(f"/entries/{sha}")
        assert page.status_code == 200, (kind, page.status_code)
        _no_raw_controls(page.text)
        png = server.get(f"/entries/{sha}/stages.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), (kind, png.status_code)
        task = HOSTILE_NAMES[kind]
        for path, params in (("/pareto.png", {"task": task}), ("/pareto", {"task": task})):
            response = server.get(path, params=params)
            assert response.status_code == 200, (kind, path, response.status_code, response.text[:300])
    png = server.get("/pareto.png", params={"task": "tiny_task"})  # every hostile entry name as a label
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    pareto = server.get("/pareto")
    _no_raw_controls(pareto.text)


# -- headers, errors ---------------------------------------------------------------------------------------------
def _assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name, response.headers.get(name))
    csp = response.headers.get("content-security-policy", "")
    for directive in ("default-src 'none'", "img-src 'self'", "form-action 'self'", "frame-ancestors 'none'"):
        assert directive in csp, (response.request.url, csp)


def test_security_headers_on_pages_api_and_errors(board: Board) -> None:
    server = board.server
    responses = [server.get(p) for p in ("/", "/pareto", "/tasks", f"/entries/{board.many}", "/api/health",
                                         "/api/entries", "/openapi.json", "/pareto.png?task=tiny_task",
                                         "/api/entries/" + "0" * 64, "/api/entries/not-a-sha", "/no/such/page")]
    responses.append(server.submit(b"not a bundle at all"))
    assert [r.status_code for r in responses][-4:] == [404, 422, 404, 400]
    for response in responses:
        _assert_security_headers(response)
    csp = responses[0].headers["content-security-policy"]
    assert "style-src 'sha256-" in csp  # the page's one inline stylesheet, by hash: no 'unsafe-inline'
    assert "unsafe-inline" not in csp


def test_internal_error_answers_generic_json(board: Board) -> None:
    response = board.server.get(f"/entries/{board.broken}")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": "internal server error"}
    _assert_security_headers(response)
    log = board.server.log.read_text() if board.server.log else ""
    assert "Traceback" in log  # the internals went to the server's log, not the client


def test_no_server_path_in_any_response(board: Board) -> None:
    server = board.server
    secrets = [str(board.tmp), str(REPO), str(server.data_dir), "Traceback", 'File "']
    paths = ["/", "/?task=tiny_task", "/pareto", "/tasks", "/api/entries", "/api/tasks", "/api/health",
             f"/entries/{board.hostile['rlo']}", f"/api/entries/{board.hostile['rlo']}", f"/entries/{board.broken}",
             "/api/entries/" + "f" * 64, "/api/entries/" + "f" * 64 + "/bundle", "/entries/zzz", "/openapi.json"]
    bodies = [server.get(p).text for p in paths]
    bodies += [server.submit(b).text for b in (b"", b"\x1f\x8b" + b"\0" * 100, b"x" * 3000)]
    bodies.append(server.post("/api/submissions", content=b"--x\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=x"}).text)
    for path, body in zip([*paths, "submit"] * 2, bodies, strict=False):
        for secret in secrets:
            assert secret not in body, (path, secret)


# -- slow clients ------------------------------------------------------------------------------------------------
def _cut_after(sock: socket.socket, trickle: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``trickle`` one byte every 0.25 s until the server closes the connection; (seconds, what it said)."""
    sock.settimeout(0.25)
    started, answer = time.monotonic(), b""
    for byte in trickle:
        if time.monotonic() - started > limit_s:
            break
        try:
            sock.sendall(bytes([byte]))
            chunk = sock.recv(4096)
            if not chunk:
                return time.monotonic() - started, answer
            answer += chunk
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started, answer
    return time.monotonic() - started, answer


def test_slowloris_headers_and_slow_body_are_cut(board: Board) -> None:
    server = board.server
    results: dict[str, tuple[float, bytes]] = {}

    def headers_slowly() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\n")
            results["headers"] = _cut_after(sock, b"X-Slow: " + b"a" * 400, 30)

    def body_slowly() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /api/submissions HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            results["body"] = _cut_after(sock, b"b" * 400, 30)

    def form_slowly() -> None:  # a multipart form: the form parser must not turn the deadline into a 400
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /api/submissions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                         b'name="bundle"; filename="x.tar"\r\n\r\n')
            results["form"] = _cut_after(sock, b"f" * 400, 30)

    threads = [threading.Thread(target=f) for f in (headers_slowly, body_slowly, form_slowly)]
    for thread in threads:
        thread.start()
    served = []
    while any(t.is_alive() for t in threads):
        served.append(server.get("/api/health").status_code)
        time.sleep(0.3)
    for thread in threads:
        thread.join()
    assert served and set(served) == {200}, "normal requests are served meanwhile"
    header_s, _ = results["headers"]
    assert header_s < HEADER_TIMEOUT_S + 1.5, f"slow headers held the connection {header_s:.1f} s"
    for kind in ("body", "form"):
        body_s, answer = results[kind]
        assert body_s < BODY_TIMEOUT_S + 1.5, f"a slow {kind} held the connection {body_s:.1f} s"
        assert answer.startswith(b"HTTP/1.1 408"), (kind, answer[:300])
        assert re.search(rb"(?i)connection: close", answer) and b"did not arrive within" in answer


# -- rendering off the event loop ----------------------------------------------------------------------------
def test_health_stays_fast_during_20_concurrent_renders(board: Board) -> None:
    server = board.server
    tasks = [f"task-{i:04d}-" + "x" * 40 for i in range(100, 120)]  # 20 different plots: no cache hit
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get(server.url + "/api/health").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda t: httpx.get(server.url + "/pareto.png", params={"task": t},
                                                     timeout=60).status_code, tasks))
    stop.set()
    poller.join()
    assert statuses == [200] * 20
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    assert len(latencies) >= 5 and p99 < 0.5, f"/api/health p99 {p99 * 1000:.0f} ms over {len(latencies)} polls"
    print(f"\n/api/health during 20 concurrent renders: p99 {p99 * 1000:.0f} ms over {len(latencies)} polls")
    started = time.monotonic()  # the same plot again: served from the cache
    assert server.get("/pareto.png", params={"task": tasks[0]}).status_code == 200
    assert time.monotonic() - started < 0.3
