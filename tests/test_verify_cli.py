"""The verify command's closing line and its usage errors, as a user sees them."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import assert_no_traceback, run_cli
from tests.test_bundle import make_run


def _bundle(tmp_path: Path) -> tuple[Path, Path]:
    run = make_run(tmp_path / "run")
    key = tmp_path / "signer"
    assert run_cli("keygen", "--out", str(key)).returncode == 0
    bundle = tmp_path / "run.tar"
    packed = run_cli("bundle", str(run), "--out", str(bundle), "--key", f"{key}.key")
    assert packed.returncode == 0, packed.output
    return bundle, Path(f"{key}.pub")


def test_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("verify", str(tmp_path))
    assert result.returncode == 2, result.output
    assert "is a directory: verify takes a bundle" in result.output
    assert_no_traceback(result)


def test_without_a_trusted_key_the_bundle_is_intact_not_verified(tmp_path: Path) -> None:
    bundle, pub = _bundle(tmp_path)
    untrusted = run_cli("verify", str(bundle))
    assert untrusted.returncode == 0, untrusted.output
    assert "intact but signer not trusted" in untrusted.output and "\nverified:" not in untrusted.output
    trusted = run_cli("verify", str(bundle), "--trusted-key", str(pub))
    assert trusted.returncode == 0 and "verified:" in trusted.output, trusted.output
