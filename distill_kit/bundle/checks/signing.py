"""``integrity``, ``signature`` and ``trusted-key``: are the bytes the ones signed, and by whom?"""

from __future__ import annotations

from distill_kit.bundle.context import VerifyContext, Warn, listing, short
from distill_kit.bundle.keys import key_id
from distill_kit.bundle.statement import ATTESTATION, SIGNER_PUB
from distill_kit.errors import VerificationError


class Integrity:
    """Every member hashes to its statement subject, and the statement lists exactly the members present."""

    name = "integrity"

    def check(self, ctx: VerifyContext) -> str:
        subjects_list = ctx.statement()["subject"]
        subjects = ctx.subjects()
        problems = []
        if len(subjects) != len(subjects_list):
            names = [s["name"] for s in subjects_list]
            problems.append(f"subjects listed twice: {listing(sorted({n for n in names if names.count(n) > 1}))}")
        present = {name: m for name, m in ctx.members.items() if name != ATTESTATION}
        changed = [f"{name} (got sha256 {short(m.sha256)}, expected {short(subjects[name])})"
                   for name, m in sorted(present.items()) if name in subjects and m.sha256 != subjects[name]]
        missing = sorted(set(subjects) - set(present))
        extra = sorted(set(present) - set(subjects))
        if changed:
            problems.append(f"changed: {listing(changed)}")
        if missing:
            problems.append(f"missing (in the statement, not in the bundle): {listing(missing)}")
        if extra:
            problems.append(f"not in the statement (added): {listing(extra)}")
        if problems:
            raise VerificationError("; ".join(problems))
        return f"{len(present)} members match the sha256 of their statement subjects"


class SignatureCheck:
    """The DSSE envelope carries a valid Ed25519 signature over the statement by the key in signer.pub."""

    name = "signature"

    def check(self, ctx: VerifyContext) -> str | Warn:
        envelope = ctx.envelope()
        public = ctx.signer_key()
        kid = key_id(public)
        if not envelope.verified_by(public):
            raise VerificationError(f"the signature in {ATTESTATION} does not verify with {SIGNER_PUB} (key {kid}): "
                                    "the statement, the signature or the key was changed after signing")
        hints = {s.keyid for s in envelope.signatures if s.keyid}
        if hints and kid not in hints:
            return Warn(f"valid Ed25519 signature by key {kid}, but the envelope's keyid hint says "
                        f"{listing(sorted(hints))} (a hint only, not used for trust)")
        return f"valid Ed25519 signature by key {kid}"


class TrustedKeyCheck:
    """The signing key is one the verifier was told to trust (--trusted-key, --keyring), valid and not revoked."""

    name = "trusted-key"

    def check(self, ctx: VerifyContext) -> str | Warn:
        envelope = ctx.envelope()
        public = ctx.signer_key()
        kid = key_id(public)
        if not envelope.verified_by(public):
            raise VerificationError("not checked: the signature is not valid")
        # Trust is decided by the trusted keys themselves verifying the signature, never by a keyid.
        matches = [t for t in ctx.trusted if envelope.verified_by(t.public_key)]
        revoked = [t for t in matches if t.revoked]
        if revoked:
            raise VerificationError(revoked[0].problem_at(ctx.now) or f"key {kid} is revoked")
        usable = [t for t in matches if t.problem_at(ctx.now) is None]
        if usable:
            chosen = usable[0]
            return f"signed by trusted key {chosen.key_id} ({chosen.name}, from {chosen.source})"
        if matches:
            raise VerificationError(matches[0].problem_at(ctx.now) or f"key {kid} is not valid now")
        if not ctx.trust_given:
            return Warn(f"signature valid but key {kid} is not trusted (pass --trusted-key)")
        raise VerificationError(f"signature valid but key {kid} is not among the trusted keys (got {kid}, "
                                f"expected one of {listing([t.key_id for t in ctx.trusted], 3) or 'none'})")
