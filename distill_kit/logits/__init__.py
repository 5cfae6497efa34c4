"""The teacher-logit cache: top-k teacher log-probs per token, sharded, checksummed, resumable (docs/logit-cache.md)."""

from distill_kit.logits.cache import CacheIndex, CacheReader, CacheWriter, EncodedSequence, SequenceLogits, ShardInfo

__all__ = ["CacheIndex", "CacheReader", "CacheWriter", "EncodedSequence", "SequenceLogits", "ShardInfo"]
