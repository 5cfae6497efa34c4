"""Result bundles: pack a finished run into a deterministic tar signed with an in-toto attestation (DSSE,
Ed25519), and verify one offline with named checks.

    pack.pack_run(run_dir, out, key, include_large=False) -> PackResult
    verify.verify_bundle(path, trusted_keys=(), keyring=None) -> VerifyReport
    keys.generate_keypair / load_private_key / load_public_key / key_id / load_keyring
    dsse.pae / sign / parse_envelope

Heavy modules are not imported here, so ``import distill_kit.bundle`` stays cheap.
"""
