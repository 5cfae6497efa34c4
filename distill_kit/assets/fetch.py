"""Download a manifest's hub assets at their pinned revisions into the kit's cache, with sizes and hashes.

This is the only code in the kit that touches the network, and it runs outside every measured stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill_kit._io import atomic_write_json, sha256_file
from distill_kit.assets.resolve import hf_cache_dir
from distill_kit.errors import DistillKitError


class FetchFailed(DistillKitError):
    """A download that did not complete (network, authentication, missing revision)."""


def _hub_refs(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    refs = [("model", r) for r in document.get("models", {}).values()]
    refs += [("dataset", r) for r in document.get("data", {}).values()]
    seen, unique = set(), []
    for kind, ref in refs:
        key = (kind, ref["id"], ref.get("revision"))
        if ref["source"] == "hf" and key not in seen:
            seen.add(key)
            unique.append((kind, ref))
    return unique


def fetch_assets(document: dict[str, Any], log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    from huggingface_hub import snapshot_download

    records = []
    for kind, ref in _hub_refs(document):
        target = hf_cache_dir(ref["id"], ref["revision"])
        if (target / ".complete").exists():
            log(f"{ref['id']}: already in the cache")
        else:
            log(f"{ref['id']}: downloading revision {ref['revision'][:12]} …")
            try:
                snapshot_download(repo_id=ref["id"], revision=ref["revision"], repo_type=kind, local_dir=target)
            except Exception as err:  # noqa: BLE001 - any hub/network failure is reported the same way
                raise FetchFailed(f"could not download {ref['id']}@{ref['revision'][:12]}: "
                                  f"{type(err).__name__}: {err}") from err
        files = sorted(p for p in target.rglob("*") if p.is_file() and ".cache" not in p.parts
                       and p.name not in (".complete", "ASSET.json"))
        record = {"kind": kind, "id": ref["id"], "revision": ref["revision"], "path": str(target),
                  "files": len(files), "bytes": sum(p.stat().st_size for p in files),
                  "sha256": {str(p.relative_to(target)): sha256_file(p) for p in files}}
        atomic_write_json(target / "ASSET.json", record)
        Path(target / ".complete").write_text("ok\n")
        records.append(record)
    return records
