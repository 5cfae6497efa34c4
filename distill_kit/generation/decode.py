"""Decoding settings and the two generation backends: Hugging Face ``generate`` (always) and vLLM (when installed).

Seeding: every batch of prompts is decoded under its own seed, derived from the run's seed and the index of the
batch's first prompt (:func:`batch_seed`). A batch's output therefore depends only on the manifest and on which
prompts it holds, never on what ran before it in the process, so a resumed stage produces the same samples.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from distill_kit.manifest.settings import GenerationSettings


@dataclass(frozen=True)
class DecodingSettings:
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # 0: no top-k truncation
    max_new_tokens: int = 1024
    num_samples: int = 1
    seed: int = 42

    @classmethod
    def from_settings(cls, g: GenerationSettings) -> DecodingSettings:
        """The manifest's ``teacher.generation`` (its defaults: ``manifest.settings``)."""
        return cls(do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                   max_new_tokens=g.max_new_tokens, num_samples=g.num_samples, seed=g.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_seed(seed: int, first_prompt: int) -> int:
    digest = hashlib.sha256(f"distill-kit-generation:{seed}:{first_prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


@dataclass
class Generated:
    """One sample of one prompt: its new token ids (without EOS) and whether it ended with EOS."""

    ids: list[int]
    stopped: bool

    @property
    def generated_tokens(self) -> int:
        return len(self.ids) + (1 if self.stopped else 0)


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], settings: DecodingSettings, seed: int, max_total: int
                 ) -> list[list[Generated]]:
        """``num_samples`` samples for each prompt (token ids), no sequence longer than ``max_total`` tokens."""


class HFBackend:
    """Batched ``model.generate`` with left padding; fp32 on CPU, bf16 on GPU (``training.models.load_model``), or
    a model already made (a rehearsal's random weights)."""

    name = "hf"

    def __init__(self, model_dir: Path | None, device: str, pad_id: int, eos_id: int, model: Any = None):
        from distill_kit.training.models import load_model
        from distill_kit.training.threads import limit_cpu_threads

        self.model = model if model is not None else load_model(model_dir, device)
        self.threads = limit_cpu_threads(device, self.model)
        self.device = device
        self.pad_id, self.eos_id = pad_id, eos_id

    def _sampling_kwargs(self, settings: DecodingSettings) -> dict[str, Any]:
        if not settings.do_sample:
            return {"do_sample": False, "num_beams": 1, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                "top_k": settings.top_k or None, "num_return_sequences": settings.num_samples}

    def generate(self, prompts: list[list[int]], settings: DecodingSettings, seed: int, max_total: int,
                 answers: list[tuple[int, bool]] | None = None) -> list[list[Generated]]:
        """``answers`` (a rehearsal): each prompt's answer as ``(generated tokens, ends with EOS)``; the batch then
        decodes exactly as long as its longest answer (EOS suppressed) and each sample is cut at its own length."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        torch.manual_seed(seed)  # seeds every device
        # Each prompt's answer budget is its own (max_total minus its prompt), so an answer never depends on which
        # prompts share its batch: the batch decodes until its largest budget (or longest drawn answer) and each
        # sample is cut at its budget after. (Cutting the batch at max_total minus its longest prompt cut every
        # answer short by its batch-mates, the more so the larger the batch.)
        budgets = [max(1, min(settings.max_new_tokens, max_total - len(p))) for p in prompts]
        new_tokens = max(budgets)
        forced = {}
        if answers is not None:
            new_tokens = max(min(tokens, budget) for (tokens, _), budget in zip(answers, budgets, strict=True))
            forced = {"min_new_tokens": new_tokens}
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=new_tokens, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                                      **forced, **self._sampling_kwargs(settings))
        rows = out[:, width:].tolist()
        per_prompt = settings.num_samples if settings.do_sample else 1
        results = []
        for i in range(len(prompts)):
            block = [row[: budgets[i]] for row in rows[i * per_prompt:(i + 1) * per_prompt]]
            samples = ([_cut(row, self.eos_id) for row in block] if answers is None
                       else [_forced(row, *answers[i]) for row in block])
            results.append(samples * (settings.num_samples // per_prompt))
        return results


def _cut(row: list[int], eos_id: int) -> Generated:
    if eos_id in row:
        return Generated(row[: row.index(eos_id)], True)
    return Generated(row, False)


def _forced(row: list[int], tokens: int, finished: bool) -> Generated:
    """A rehearsed sample at its drawn length: ``tokens`` generated, the last one the EOS where it ``finished``
    (unless the batch was cut shorter by the sequence length: then it ends unfinished, as a real one would)."""
    if finished and tokens <= len(row):
        return Generated(row[: tokens - 1], True)
    return Generated(row[:tokens], False)


class VLLMBackend:
    """vLLM's offline ``LLM.generate`` on token-id prompts; each request seeded (``SamplingParams.seed``)."""

    name = "vllm"

    def __init__(self, model_dir: Path, tokenizer_dir: Path, eos_id: int, max_model_len: int):
        from vllm import LLM  # optional extra: import-guarded by available()

        self.llm = LLM(model=str(model_dir), tokenizer=str(tokenizer_dir), dtype="bfloat16",
                       max_model_len=max_model_len, enable_prefix_caching=True)
        self.eos_id = eos_id

    def generate(self, prompts: list[list[int]], settings: DecodingSettings, seed: int, max_total: int
                 ) -> list[list[Generated]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests, params = [], []
        for i, prompt in enumerate(prompts):
            requests.append(TokensPrompt(prompt_token_ids=prompt))
            params.append(SamplingParams(
                n=settings.num_samples, temperature=settings.temperature if settings.do_sample else 0.0,
                top_p=settings.top_p if settings.do_sample else 1.0,
                top_k=(settings.top_k or -1) if settings.do_sample else -1,
                max_tokens=max(1, min(settings.max_new_tokens, max_total - len(prompt))),
                seed=(seed + i) % (2**63 - 1), stop_token_ids=[self.eos_id]))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[Generated([t for t in c.token_ids if t != self.eos_id], c.finish_reason == "stop")
                 for c in out.outputs] for out in outputs]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def choose_backend(requested: str, device: str) -> tuple[str, str]:
    """``(backend, why)``: ``auto`` takes vLLM on a GPU when it is installed, else HF. Asking for vLLM where it
    cannot run is an error, not a silent fallback."""
    if requested == "hf":
        return "hf", "asked for"
    if requested == "vllm":
        if not vllm_available():
            raise RuntimeError("teacher.generation.backend is 'vllm' but vllm is not installed: install the "
                               "'vllm' extra, or set backend to 'hf' or 'auto'")
        if device != "cuda":
            raise RuntimeError("teacher.generation.backend is 'vllm', which needs a GPU; set backend to 'hf'")
        return "vllm", "asked for"
    if device == "cuda" and vllm_available():
        return "vllm", "auto: vllm is installed and a GPU is present"
    return "hf", "auto: " + ("no GPU" if device != "cuda" else "vllm is not installed")
