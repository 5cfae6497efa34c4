"""Verify a bundle offline: every check in ``checks.CHECKS``, each PASS, WARN or FAIL with its reason.

(1) load the trusted keys the user gave (a key file that cannot be read is a usage error, raised);
(2) read the archive once, hashing every member and holding only the small documents (never extracting);
(3) run every registered check in order: a check returns a reason (PASS), returns ``Warn`` (WARN) or raises
``VerificationError`` (FAIL); an unexpected exception inside a check is a FAIL too, never a traceback;
(4) return the report. A damaged or hostile file is a FAIL of the ``archive`` check, never an exception; only a
path that does not exist raises ``InvalidBundle``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from distill_kit import __version__
from distill_kit.bundle.archive import Limits, scan_archive
from distill_kit.bundle.checks import CHECKS, Check
from distill_kit.bundle.context import VerifyContext, Warn, keep_member
from distill_kit.bundle.keys import TrustedKey, load_keyring, trusted_key_from_file
from distill_kit.errors import InvalidBundle, VerificationError

REPORT_VERSION = 1
Status = Literal["PASS", "WARN", "FAIL"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "reason": self.reason}


@dataclass
class VerifyReport:
    bundle: Path
    bundle_sha256: str | None
    bundle_size_bytes: int
    signer_key_id: str | None
    results: list[CheckResult] = field(default_factory=list)
    verifier_version: str = __version__

    @property
    def ok(self) -> bool:
        """No check failed (and at least one ran)."""
        return bool(self.results) and all(r.status != "FAIL" for r in self.results)

    def result(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        """The report as ``verify --json`` prints it (valid against schemas/verify_report.schema.json)."""
        return {
            "version": REPORT_VERSION,
            "verifier_version": self.verifier_version,
            "ok": self.ok,
            "bundle": {"path": str(self.bundle), "sha256": self.bundle_sha256, "size_bytes": self.bundle_size_bytes},
            "signer_key_id": self.signer_key_id,
            "results": [r.to_dict() for r in self.results],
        }


def run_checks(checks: Sequence[Check], ctx: VerifyContext) -> list[CheckResult]:
    """(3) Every check in order. No checks at all is itself a failure: nothing was verified."""
    if not checks:
        return [CheckResult("checks", "FAIL", "no verification checks are registered: nothing was verified")]
    results = []
    unreadable = ctx.scan.fatal is not None
    for check in checks:
        if unreadable and check.name != "archive":
            results.append(CheckResult(check.name, "FAIL", "not checked: the archive could not be read"))
            continue
        try:
            outcome = check.check(ctx)
        except VerificationError as err:
            results.append(CheckResult(check.name, "FAIL", str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - a hostile document must give a FAIL, never a traceback
            results.append(CheckResult(check.name, "FAIL", f"the check could not complete on this bundle "
                                       f"({type(err).__name__}: {err})"))
            continue
        if isinstance(outcome, Warn):
            results.append(CheckResult(check.name, "WARN", outcome.reason))
        else:
            results.append(CheckResult(check.name, "PASS", outcome or "ok"))
    return results


def _trusted_keys(trusted_keys: Iterable[Path], keyring: Path | None) -> list[TrustedKey]:
    """(1) Raises KeyFileError for a key file or keyring that cannot be used (the user's input, exit 2)."""
    keys = [trusted_key_from_file(Path(p)) for p in trusted_keys]
    if keyring is not None:
        keys += load_keyring(Path(keyring))
    return keys


def verify_bundle(path: Path, trusted_keys: Iterable[Path] = (), keyring: Path | None = None, *,
                  limits: Limits | None = None, now: datetime | None = None,
                  checks: Sequence[Check] | None = None,
                  progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Run every check on the bundle at ``path``.

    ``trusted_keys``: PEM public keys to trust; ``keyring``: a keyring file (validity periods, revocations);
    ``now``: the time keys must be valid at (default: now); ``progress(bytes)`` is called as the file is read.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise InvalidBundle(f"{path}: no such file")
    key_paths = list(trusted_keys)
    trusted = _trusted_keys(key_paths, keyring)  # (1)
    limits = limits or Limits()
    scan = scan_archive(path, limits, keep_member, progress)  # (2)
    ctx = VerifyContext(path=path, scan=scan, limits=limits, trusted=trusted,
                        trust_given=bool(key_paths) or keyring is not None,
                        now=now or datetime.now(UTC))
    results = run_checks(CHECKS if checks is None else checks, ctx)  # (3)
    return VerifyReport(bundle=path, bundle_sha256=scan.sha256, bundle_size_bytes=scan.size_bytes,
                        signer_key_id=ctx.signer_key_id() if scan.fatal is None else None, results=results)  # (4)
