"""Loading models and tokenizers from local paths only (runs never download)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline() -> None:
    """Runs never download; and transformers' per-load progress bars are noise in a stage's log."""
    os.environ.update(OFFLINE_ENV)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(path: Path) -> Any:
    set_offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, device: str, dtype: str = "auto") -> Any:
    """A causal LM in eval mode on ``device``: bf16 on GPUs unless told otherwise, fp32 on CPUs."""
    set_offline()
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = torch.float32
    if device == "cuda" and dtype in ("auto", "bf16"):
        torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch_dtype)
    return model.to(device).eval()
