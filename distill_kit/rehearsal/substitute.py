"""What stages call instead of reading weights, tokenizers and data when the run is a rehearsal.

Models are built from their architecture's numbers directly on the stage's device (``with torch.device(...)``),
in the dtype the real load would give, with random weights under the run's seed: a 32B teacher never passes
through the host. Everything a stage does with them afterwards (caching, training, saving a checkpoint) is the
real code path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill_kit._io import atomic_write_text
from distill_kit.rehearsal.settings import RehearsalSettings
from distill_kit.rehearsal.shapes import (
    LengthDistribution,
    TokenizerShape,
    length_distribution,
    model_config,
    tokenizer_shape,
)
from distill_kit.rehearsal.streams import token_streams
from distill_kit.training.data import Example

TOKENIZER_FILE = "rehearsal_tokenizer.json"


@dataclass
class SyntheticTokenizer:
    """What the stages read from a tokenizer when there is no text: its size and special ids."""

    vocab_size: int
    eos_token_id: int
    pad_token_id: int
    source: str

    def __len__(self) -> int:
        return self.vocab_size


# A stand-in keeps the architecture and vocabulary (so its outputs have the real format and sizes) at one narrow
# layer, so its cost is negligible: used where estimate --reuse takes the stage's cost from an earlier measurement.
STAND_IN = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
            "num_key_value_heads": 2, "head_dim": 32}


def random_model(ref: dict[str, Any], manifest_name: str, device: str, dtype: str, seed: int,
                 stand_in: bool = False) -> Any:
    """A causal LM of the reference's architecture with random weights, made on ``device`` (eval mode); a
    ``stand_in`` is the same architecture and vocabulary at ``STAND_IN``'s size."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill_kit.training.models import set_offline

    set_offline()
    torch_dtype = torch.float32
    if device == "cuda" and dtype in ("auto", "bf16"):
        torch_dtype = torch.bfloat16
    config = model_config(ref, manifest_name)
    if stand_in:
        for key, value in STAND_IN.items():
            if key != "head_dim" or hasattr(config, "head_dim"):
                setattr(config, key, value)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    return model.eval()


def synthetic_tokenizer(document: dict[str, Any], folder: Path) -> tuple[SyntheticTokenizer, Path]:
    """The run's tokenizer as a shape, and a folder describing it (copied beside checkpoints, as a real one is)."""
    models = document["models"]
    ref = models.get("tokenizer") or models["student"]
    shape: TokenizerShape = tokenizer_shape(ref, document["name"])
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / TOKENIZER_FILE, json.dumps({"rehearsal": True, **vars(shape)}, indent=2) + "\n")
    return SyntheticTokenizer(shape.vocab_size, shape.eos_token_id, shape.pad_token_id, shape.source), folder


def _real_tokenizer(document: dict[str, Any]) -> Any | None:
    """The kit's own tiny tokenizer, where the run uses one (its real lengths need it); hub ones are never read."""
    models = document["models"]
    ref = models.get("tokenizer") or models["student"]
    if ref["source"] == "hf":
        return None
    from distill_kit.assets.resolve import asset_path
    from distill_kit.training.models import load_tokenizer

    return load_tokenizer(asset_path(ref, document["name"]))


def train_lengths(document: dict[str, Any], max_seq_len: int) -> LengthDistribution:
    """``data.train``'s length distribution (a hub dataset's published shape, or the kit's own data's lengths)."""
    train = document["data"]["train"]
    return length_distribution(train, document["name"], _real_tokenizer(document), max_seq_len)


def train_streams(document: dict[str, Any], tokenizer: SyntheticTokenizer, max_seq_len: int, budget_tokens: int,
                  count_targets: bool = False) -> list[Example]:
    """Random token streams of ``data.train``'s length distribution up to a token budget."""
    lengths = train_lengths(document, max_seq_len)
    settings = RehearsalSettings.from_document(document)
    return token_streams(lengths, tokenizer.vocab_size, max_seq_len, budget_tokens, settings.seed, count_targets,
                         (tokenizer.pad_token_id, tokenizer.eos_token_id))


def rehearsal_record(document: dict[str, Any]) -> dict[str, Any]:
    """What a rehearsed stage's summary says about the substitution."""
    return {"rehearsal": True, **RehearsalSettings.from_document(document).to_dict(),
            "weights": "random, of the models' published architecture", "data": "random token streams of the "
            "dataset's length distribution"}
