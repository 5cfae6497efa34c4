"""Run manifests: load (YAML/JSON, ``extends:`` layering, ``--set`` overrides), validate, resolve, hash.

    resolved = load_manifest(path, overrides=["student.batch_size=8"])
    resolved.document   # the merged, defaulted, validated manifest
    resolved.sha256     # its identity: sha256 of the canonical JSON
"""

from distill_kit.manifest.resolve import ResolvedManifest, find_manifest, load_manifest

__all__ = ["ResolvedManifest", "find_manifest", "load_manifest"]
