"""Tiny models and data the kit makes itself (deterministically), for the smoke manifests and the tests.

- :mod:`distill_kit.assets.task`: the task's public API (rows, text format, exact-match metric, ``TINY_DIR``).
- :mod:`distill_kit.assets.make_assets`: regenerates ``tiny/`` (``python -m distill_kit.assets.make_assets``).
- :mod:`distill_kit.assets.check_kd`: a minimal top-k KD loop proving the student can learn from the teacher.
"""
