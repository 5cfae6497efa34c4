"""The leaderboard under load: 1,000 submissions from 50 concurrent clients against the real server on PostgreSQL.

    python -m benchmarks.leaderboard_load [--submissions 1000] [--clients 50] [--time-limit-s 900]

A throwaway PostgreSQL cluster is started in a temporary folder (as ``tests/test_leaderboard.py`` does), and the
server (``distill-kit leaderboard serve``) on 127.0.0.1 only. The mix, shuffled: 20% valid distinct bundles
(synthetic runs of ``tests/synthetic_runs.py``, signed by 50 keys of 25 teams, registered in the database before
the server starts), 30% re-submissions of those, 25% invalid (tampered, unsigned, unregistered key, random bytes,
empty), 25% hostile (members escaping the archive, symlinks, a gzip bomb as a trace signed by a registered key,
a gzip-compressed upload, 20,000-member archives, a 3,000-task run, control characters in the run's name, an
upload over the size limit, a multipart form of 2,000 fields). The server's rate limits are set high on purpose
(``RATE_ARGS``): this measures throughput and integrity, not the per-key and per-address limiters. /api/health
is polled every 50 ms throughout. Every loop is bounded in count and time.

Figures: ``accepted_lost`` (answered 201 but missing from the database or the bundle store at the end, or
created twice, or a bundle stored twice) = 0; ``hostile_not_4xx`` (a hostile upload answered anything but a 4xx)
= 0; ``health_p99_ms`` < 500; ``submissions_per_s``; ``server_peak_rss_mb`` (the server process's high-water
mark); ``worker_peak_rss_mb`` (the largest high-water mark of its child processes: verifiers, plot renderers).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, write_result

TEAMS, KEYS_PER_TEAM = 25, 2
MAX_UPLOAD_MB = 4
RATE_ARGS = ["--rate-per-minute", "100000", "--rate-burst", "10000", "--ip-rate-per-minute", "100000",
             "--ip-rate-burst", "10000"]
SHARES = {"valid": 0.20, "duplicate": 0.30, "invalid": 0.25, "hostile": 0.25}
BOMB_BYTES = 256 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL and the server -------------------------------------------------------------------------------
@contextmanager
def postgres() -> Any:
    """A throwaway cluster in a new temporary folder (run as the postgres user when we are root); its URL."""
    root = Path(tempfile.mkdtemp(prefix="distill-kit-load-pg-"))  # its own folder: postgres must enter it
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise SystemExit("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    pg_bin = found[-1].parent
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data, port = root / "data", free_port()
    run = {"check": True, "capture_output": True, "cwd": root, "env": {**os.environ, "HOME": str(root),
                                                                        "LC_ALL": "C"}, **as_user}
    subprocess.run([pg_bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"], **run)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([pg_bin / "pg_ctl", "-D", data, "-l", root / "pg.log", "-o", options, "-w", "-t", "60", "start"],
                   **run)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as connection:
            connection.execute('CREATE DATABASE "leaderboard"')
        yield f"postgresql://postgres@127.0.0.1:{port}/leaderboard"
    finally:
        subprocess.run([pg_bin / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], **{**run, "check": False})
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def server(db: str, data_dir: Path, log: Path) -> Any:
    port = free_port()
    command = [sys.executable, "-m", "distill_kit", "leaderboard", "serve", "--db", db, "--data-dir", str(data_dir),
               "--host", "127.0.0.1", "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB), *RATE_ARGS]
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- bundles ---------------------------------------------------------------------------------------------------
def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, body in members:
            info.size = len(body) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(body) if info.isfile() else None)
    return out.getvalue()


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _tampered(data: bytes) -> bytes:
    return _tar([(m, b.replace(b'"status": "finished"', b'"status": "finishes"', 1) if m.name == "run/summary.json"
                  else b) for m, b in _members(data)])


def _unsigned(data: bytes) -> bytes:
    return _tar([(m, b) for m, b in _members(data) if m.name not in ("attestation.dsse.json", "signer.pub")])


def _escaping(data: bytes) -> bytes:
    return _tar([*_members(data), (_file("../../../etc/cron.d/evil"), b"* * * * * root id\n")])


def _symlinked(data: bytes) -> bytes:
    link = _file("run/stages/eval/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _tar([*_members(data), (link, b"")])


def _many_members(count: int) -> bytes:
    return _tar([(_file(f"run/x/{i:06d}"), b"") for i in range(count)])


@dataclass
class Kit:
    valid: list[bytes] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)
    hostile: list[tuple[str, bytes | None]] = field(default_factory=list)  # (kind, body); None = special request


class Maker:
    """Signed bundles of synthetic runs (``tests/synthetic_runs.py``), by 50 keys of 25 teams."""

    def __init__(self, root: Path):
        sys.path.insert(0, str(REPO / "tests"))
        from synthetic_runs import make_run, variant, with_scores  # the tests' consistent synthetic runs

        from distill_kit.bundle.keys import generate_keypair, load_private_key
        from distill_kit.bundle.pack import pack_run

        self.root, self.variant, self.with_scores, self.pack_run = root, variant, with_scores, pack_run
        self.keys = [generate_keypair(root / f"key-{t:02d}-{k}") for t in range(TEAMS) for k in range(KEYS_PER_TEAM)]
        self.private = [load_private_key(k.private_path) for k in self.keys]
        self.outsider = load_private_key(generate_keypair(root / "stranger").private_path)
        self.base = make_run(root / "base")

    def run(self, name: str, seed: int, score: float = 0.5, params_b: float = 1) -> Path:
        return self.variant(self.base, self.root / name, name, seed, score, params_b=params_b)

    def pack(self, run: Path, signer: Any) -> bytes:
        data = self.pack_run(run, self.root / f"{run.name}.tar", signer).path.read_bytes()
        shutil.rmtree(run)
        return data

    def valid(self, count: int) -> list[bytes]:
        return [self.pack(self.run(f"load-{i:04d}", 1000 + i, round(0.2 + (i % 60) / 100, 2), (1, 7, 13)[i % 3]),
                          self.private[i % len(self.private)]) for i in range(count)]

    def hostile_signed(self) -> list[tuple[str, bytes | None]]:
        """Signed by a registered key, hostile inside: a gzip bomb as a trace, 3,000 tasks, control characters."""
        bomb = self.run("bomb", 7001)
        with gzip.open(bomb / "stages" / "student" / "trace.csv.gz", "wb", compresslevel=9) as out:
            chunk = b"0" * (1 << 20)
            for _ in range(BOMB_BYTES // len(chunk)):
                out.write(chunk)
        named = self.variant(self.base, self.root / "named", "evil\u202egpj.exe\x1b[2J", 7002, 0.5)  # schema: 422
        many = self.with_scores(self.run("many", 7003), {f"task-{i:04d}": 0.5 for i in range(3000)})
        hidden = self.with_scores(self.run("hidden", 7004), {"t\u202eksa\x1b[2J\x00": 0.5})
        return [(kind, self.pack(run, self.private[0])) for kind, run in (
            ("gzip_bomb_trace", bomb), ("control_chars_name", named), ("3000_tasks", many),
            ("control_chars_task", hidden))]


def build_kit(root: Path, n: int) -> tuple[Kit, list[Path]]:
    counts = {k: round(v * n) for k, v in SHARES.items()}
    maker = Maker(root)
    valid = maker.valid(counts["valid"])
    unregistered = [maker.pack(maker.run(f"u{i}", 9000 + i), maker.outsider) for i in range(10)]
    rng = random.Random(5)
    invalid_makers = [lambda i: _tampered(valid[i % len(valid)]), lambda i: _unsigned(valid[i % len(valid)]),
                      lambda i: unregistered[i % len(unregistered)], lambda i: rng.randbytes(rng.randint(1, 50_000)),
                      lambda i: b""]
    kit = Kit(valid=valid, invalid=[invalid_makers[i % 5](i) for i in range(counts["invalid"])])
    whole_gzip = gzip.compress(_tar([(_file("run/zeros"), b"\0" * (64 << 20))]), 9)
    hostile: list[tuple[str, bytes | None]] = [
        ("escaping_member", _escaping(valid[0])), ("symlink_member", _symlinked(valid[1])),
        ("gzip_upload", whole_gzip), ("5000_members", _many_members(5000)), *maker.hostile_signed(),
        ("over_size_limit", None), ("multipart_2000_fields", None)]
    kit.hostile = [hostile[i % len(hostile)] for i in range(counts["hostile"])]
    return kit, [k.public_path for k in maker.keys]


# -- the load --------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    detail: str
    sha: str
    status: int  # 0: no answer


def _request(client: Any, url: str, kind: str, detail: str, body: bytes | None) -> Outcome:
    import httpx

    try:
        if detail == "over_size_limit":
            body = b"\0" * ((MAX_UPLOAD_MB << 20) + 1024)
            response = client.post(url + "/api/submissions", content=body)
        elif detail == "multipart_2000_fields":
            fields = "".join(f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(2000))
            body = (fields + "--b--\r\n").encode()
            response = client.post(url + "/api/submissions", content=body,
                                   headers={"Content-Type": "multipart/form-data; boundary=b"})
        else:
            response = client.post(url + "/api/submissions", content=body or b"",
                                   headers={"Content-Type": "application/octet-stream"})
        return Outcome(kind, detail, sha256(body or b""), response.status_code)
    except httpx.HTTPError as err:
        return Outcome(kind, f"{detail}: {type(err).__name__}", sha256(body or b""), 0)


class Sampler:
    """Polls /api/health every 50 ms and the RSS high-water marks of the server and its children every 0.5 s."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.health_ms: list[float] = []
        self.health_failures = 0
        self.server_hwm_kb = 0
        self.child_hwm_kb: dict[int, int] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._health), threading.Thread(target=self._memory)]

    def __enter__(self) -> Sampler:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _health(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    ok = client.get(self.url + "/api/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health_ms.append((time.monotonic() - started) * 1000)
                self.health_failures += not ok
                self.stop.wait(0.05)

    def _memory(self) -> None:
        import psutil

        server = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                self.server_hwm_kb = max(self.server_hwm_kb, _hwm_kb(server.pid))
                for child in server.children(recursive=True):
                    self.child_hwm_kb[child.pid] = max(self.child_hwm_kb.get(child.pid, 0), _hwm_kb(child.pid))
            except psutil.Error:
                pass
            self.stop.wait(0.5)


def _hwm_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), kB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _jobs(kit: Kit, n: int) -> list[tuple[str, str, bytes | None]]:
    counts = {k: round(v * n) for k, v in SHARES.items()}
    rng = random.Random(11)
    jobs: list[tuple[str, str, bytes | None]] = [("valid", "valid", b) for b in kit.valid]
    jobs += [("duplicate", "duplicate", kit.valid[rng.randrange(len(kit.valid))]) for _ in range(counts["duplicate"])]
    jobs += [("invalid", "invalid", b) for b in kit.invalid]
    jobs += [("hostile", detail, b) for detail, b in kit.hostile]
    rng.shuffle(jobs)
    return jobs


def _stored(db: str, data_dir: Path) -> tuple[Counter[str], set[str]]:
    """Entries per bundle sha256 in the database, and the bundles in the store's folder."""
    import psycopg

    with psycopg.connect(db) as connection:
        rows = connection.execute("SELECT bundle_sha256 FROM entries").fetchall()
    return Counter(r[0] for r in rows), {p.name.removesuffix(".tar") for p in (data_dir / "bundles").glob("*.tar")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--time-limit-s", type=float, default=900.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="distill-kit-load-"))
    try:
        started = time.monotonic()
        kit, pubs = build_kit(root / "kit", args.submissions)
        jobs = _jobs(kit, args.submissions)
        print(f"built {len(jobs)} submissions in {time.monotonic() - started:.0f} s", flush=True)
        with postgres() as db:
            from distill_kit.leaderboard.config import database_url
            from distill_kit.leaderboard.store import Store

            store = Store(database_url(db, root / "data"))
            for i, pub in enumerate(pubs):  # registered before the server starts, as `leaderboard add-key` does
                store.add_key(f"team-{i // KEYS_PER_TEAM:02d}", pub.read_bytes())
            store.close()
            with server(db, root / "data", root / "server.log") as (url, pid):
                outcomes, elapsed, sampler = _load(url, pid, jobs, args)
            counts, files = _stored(database_url(db, root / "data").replace("+psycopg", ""), root / "data")
        _report(outcomes, elapsed, sampler, counts, files, args, _server_errors(root / "server.log"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _load(url: str, pid: int, jobs: list[tuple[str, str, bytes | None]], args: argparse.Namespace
          ) -> tuple[list[Outcome], float, Sampler]:
    import httpx

    deadline = time.monotonic() + args.time_limit_s
    limits = httpx.Limits(max_connections=args.clients + 10)
    with Sampler(url, pid) as sampler, httpx.Client(timeout=300, limits=limits) as client:
        def send(job: tuple[str, str, bytes | None]) -> Outcome:
            kind, detail, body = job
            if time.monotonic() > deadline:
                return Outcome(kind, "not sent: time limit", sha256(body or b""), 0)
            return _request(client, url, kind, detail, body)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            outcomes = list(pool.map(send, jobs))
        elapsed = time.monotonic() - started
    return outcomes, elapsed, sampler


def _server_errors(log: Path) -> dict[str, int]:
    """The exceptions the server logged (type and message, clipped), counted: what a 5xx came from."""
    import re

    found = re.findall(r"(?m)^([A-Za-z_][\w.]*(?:Error|Exception|Timeout)\b.*)$", log.read_text(errors="replace"))
    return dict(Counter(line[:200] for line in found).most_common(10))


def _report(outcomes: list[Outcome], elapsed: float, sampler: Sampler, counts: Counter[str], files: set[str],
            args: argparse.Namespace, server_errors: dict[str, int]) -> None:
    created = Counter(o.sha for o in outcomes if o.status == 201)
    lost = sum(1 for sha in created if counts.get(sha, 0) != 1 or sha not in files)
    lost += sum(n - 1 for n in created.values()) + sum(n - 1 for n in counts.values() if n > 1)
    hostile = [o for o in outcomes if o.kind == "hostile"]
    not_4xx = [o for o in hostile if not 400 <= o.status < 500]
    health = sorted(sampler.health_ms) or [float("nan")]
    p99 = health[min(len(health) - 1, int(0.99 * len(health)))]
    figures = {"accepted_lost": lost, "hostile_not_4xx": len(not_4xx), "health_p99_ms": round(p99, 1),
               "submissions_per_s": round(len(outcomes) / elapsed, 2),
               "server_peak_rss_mb": round(sampler.server_hwm_kb / 1024, 1),
               "worker_peak_rss_mb": round(max(sampler.child_hwm_kb.values(), default=0) / 1024, 1)}
    targets = {"accepted_lost": "== 0", "hostile_not_4xx": "== 0", "health_p99_ms": "< 500"}
    details = {
        "submissions": len(outcomes), "clients": args.clients, "elapsed_s": round(elapsed, 1),
        "statuses": {f"{k} {s}": n for (k, s), n in sorted(Counter((o.kind, o.status) for o in outcomes).items())},
        "hostile_statuses": {f"{d} {s}": n for (d, s), n in sorted(Counter((o.detail, o.status)
                                                                            for o in hostile).items())},
        "hostile_not_4xx": sorted({f"{o.detail} -> {o.status}" for o in not_4xx}),
        "entries_in_database": sum(counts.values()), "bundles_stored": len(files), "created_201": len(created),
        "health_polls": len(sampler.health_ms), "health_failures": sampler.health_failures,
        "health_max_ms": round(max(health), 1), "health_median_ms": round(health[len(health) // 2], 1),
        "server_rate_limits": " ".join(RATE_ARGS) + " (set high: the per-key and per-address limiters are not "
                              "what this measures; one address sends all)",
        "keys": f"{TEAMS * KEYS_PER_TEAM} keys of {TEAMS} teams", "verify_workers": 2,
        "max_upload_mb": MAX_UPLOAD_MB, "database": "PostgreSQL (throwaway cluster, fsync off)",
        "server_errors_logged": server_errors,
    }
    write_result("leaderboard_load", figures, targets, details)
    print(json.dumps(details, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
