"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1) signed with Ed25519.

The signature covers the pre-authentication encoding (PAE) of the payload type and the payload bytes, never the
JSON of the envelope, so re-serialising an envelope cannot change what was signed::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where LEN is the byte length as ASCII decimal. The ``keyid`` of a signature is a hint only: verification tries
the given public key against every signature.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from distill_kit.bundle.keys import PublicKey, SigningKey, key_id
from distill_kit.errors import InvalidBundle

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of ``payload`` (what is signed)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                           for s in self.signatures],
        }

    def verified_by(self, public_key: PublicKey) -> bool:
        """True when at least one signature verifies with ``public_key`` (the keyids are not consulted)."""
        message = pae(self.payload_type, self.payload)
        for signature in self.signatures:
            try:
                public_key.verify(signature.sig, message)
                return True
            except InvalidSignature:
                continue
        return False


def sign(payload: bytes, payload_type: str, key: SigningKey) -> Envelope:
    """An envelope holding ``payload`` with one Ed25519 signature by ``key`` (deterministic: Ed25519 is)."""
    signature = key.sign(pae(payload_type, payload))
    return Envelope(payload, payload_type, (Signature(key_id(key.public_key()), signature),))


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidBundle(f"{where} is not a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as err:
        raise InvalidBundle(f"{where} is not valid base64: {err}") from err


def parse_envelope(document: Any) -> Envelope:
    """An envelope from its JSON form; raises ``InvalidBundle`` naming what is malformed."""
    if not isinstance(document, dict):
        raise InvalidBundle("the envelope is not a JSON object")
    missing = [k for k in ("payload", "payloadType", "signatures") if k not in document]
    if missing:
        raise InvalidBundle(f"the envelope lacks {', '.join(missing)}")
    if not isinstance(document["payloadType"], str):
        raise InvalidBundle("the envelope's payloadType is not a string")
    signatures = document["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise InvalidBundle("the envelope has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise InvalidBundle(f"the envelope has {len(signatures)} signatures (at most {MAX_SIGNATURES})")
    parsed = []
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict) or "sig" not in entry:
            raise InvalidBundle(f"signature {i} of the envelope lacks 'sig'")
        keyid = entry.get("keyid", "")
        parsed.append(Signature(keyid if isinstance(keyid, str) else "", _b64(entry["sig"], f"signature {i}")))
    return Envelope(_b64(document["payload"], "the envelope's payload"), document["payloadType"], tuple(parsed))
