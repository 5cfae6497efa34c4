"""The identity of the machine and software a run used: hardware, drivers, packages, code, container."""

from distill_kit.fingerprint.collect import collect_fingerprint

__all__ = ["collect_fingerprint"]
