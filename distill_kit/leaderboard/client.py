"""``distill-kit submit``: upload a bundle to a leaderboard and say what became of it (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from distill_kit.errors import InvalidBundle, InvalidInput

SUBMIT_PATH = "/api/submissions"


@dataclass
class Outcome:
    """What the server answered: its HTTP status and JSON body (or why there is none)."""

    http_status: int | None
    accepted: bool
    reason: str
    url: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def bad_input(self) -> bool:
        """The server refused the upload itself (malformed, too large): the user's file is the problem."""
        return self.http_status in (400, 413)


def submit_url(base: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"--to {base!r}: give the leaderboard's URL, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if not path.endswith(SUBMIT_PATH):
        path += SUBMIT_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def submit(bundle: Path, to: str, timeout_s: float = 600.0) -> Outcome:
    """POST the bundle as the raw request body; the server's verdict, or an Outcome saying why there is none."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise InvalidBundle(f"{bundle}: no such file")
    url = submit_url(to)
    size = bundle.stat().st_size
    with open(bundle, "rb") as handle:
        request = urllib.request.Request(url, data=handle, method="POST", headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size), "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) checked
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            return Outcome(None, False, f"could not reach {url}: {reason}", url)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    reason = str(body.get("reason") or body.get("detail") or raw[:200].decode("utf-8", errors="replace"))
    return Outcome(status, body.get("status") == "accepted" and status in (200, 201), reason, url, body)
