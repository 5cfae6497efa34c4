"""Synthetic data from a teacher: decoding settings and backends, the sharded on-disk format, and the filters."""
