"""Eval stage of a rehearsal: per model, forward passes over ``rehearsal.eval_tokens`` random tokens (the prefill
rate) and a decode window, ``DECODE_NEW_TOKENS`` new tokens generated with the KV cache at ``eval.batch_size`` random
prompts of ``DECODE_PROMPT_TOKENS`` tokens (the decode rate), each in its own energy window. A rehearsal has no
text, so it scores nothing: the stage reports no quality, only what evaluating costs at the models' shapes;
``distill-kit estimate`` scales both rates to the manifest's tasks (docs/estimate.md, "Evaluation").

Models: ``teacher`` and ``student_initial`` are random weights of their shapes; ``student`` is the rehearsed
student stage's saved checkpoint (``stages/student/final``), loaded as a real evaluation would.
"""

from __future__ import annotations

import time
from typing import Any

from distill_kit.rehearsal import RehearsalSettings
from distill_kit.rehearsal.substitute import random_model, rehearsal_record, synthetic_tokenizer, train_streams
from distill_kit.stages.base import StageContext, StageResult

NOTE = ("rehearsal: forward passes over random token streams and a greedy decode window per model, no scores "
        "(evaluation cost at the models' shapes)")
# the decode window: seconds per model on a GPU (64 cached decode steps); both cut to the student's positions
DECODE_PROMPT_TOKENS = 128
DECODE_NEW_TOKENS = 64


def forward_tokens(model: Any, batches: list[list[Any]], pad_id: int, device: str) -> int:
    """Forward every batch (no gradients, logits computed as lm-eval's loglikelihood would); the tokens read."""
    import torch

    from distill_kit.logits.teacher import pad_batch

    tokens = 0
    with torch.no_grad():
        for batch in batches:
            ids, _, lengths = pad_batch([e.tokens for e in batch], pad_id)
            model(input_ids=ids.to(device), use_cache=False).logits.float().log_softmax(-1)
            tokens += sum(lengths)
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens


def decode_shape(max_len: int) -> tuple[int, int]:
    """(prompt tokens, new tokens) of the decode window, within ``max_len`` positions."""
    prompt = max(1, min(DECODE_PROMPT_TOKENS, max_len // 2))
    return prompt, max(1, min(DECODE_NEW_TOKENS, max_len - prompt))


def decode_prompts(streams: list[Any], batch: int, length: int) -> list[list[int]]:
    """``batch`` prompts of ``length`` ids, cut from the rehearsal's random streams (no pad or EOS among them)."""
    flat = [t for example in streams for t in example.tokens]
    return [[flat[(i * length + j) % len(flat)] for j in range(length)] for i in range(batch)]


def decode_tokens(model: Any, prompts: list[list[int]], new_tokens: int, tokenizer: Any, device: str) -> int:
    """Greedy generation of exactly ``new_tokens`` per prompt with the KV cache (EOS held off by
    ``min_new_tokens``); the tokens generated."""
    import torch

    ids = torch.tensor(prompts, device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if device == "cuda":
        torch.cuda.synchronize()
    return int(out.shape[0] * (out.shape[1] - ids.shape[1]))


class RehearsalEvalStage:
    kind = "eval"

    def setup(self, ctx: StageContext) -> None:
        doc = ctx.manifest.document
        self.ctx = ctx
        self.settings = RehearsalSettings.from_document(doc)
        settings = ctx.manifest.settings
        self.models = list(settings.eval.models)
        self.dtype = settings.eval.dtype
        batch_size = settings.eval.batch_size
        max_len = settings.student.max_seq_len
        self.tokenizer, _ = synthetic_tokenizer(doc, ctx.stage_dir / "rehearsal_tokenizer")
        examples = train_streams(doc, self.tokenizer, max_len, self.settings.eval_tokens)
        self.batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        self.batch_size = batch_size
        prompt_len, self.new_tokens = decode_shape(max_len)
        self.prompts = decode_prompts(examples, batch_size, prompt_len)

    def _model(self, name: str) -> Any:
        doc = self.ctx.manifest.document
        if name == "student" and doc["pipeline"] != "eval_only":
            from distill_kit.training.models import load_model

            final = self.ctx.output_of("student") / "final"
            if not (final / "config.json").exists():
                raise FileNotFoundError(f"no trained student at {final} (did the student stage finish?)")
            return load_model(final, self.ctx.device, self.dtype)
        ref = doc["models"]["teacher" if name == "teacher" else "student"]
        return random_model(ref, doc["name"], self.ctx.device, self.dtype, self.settings.seed)

    def _forward(self, name: str, model: Any) -> dict[str, Any]:
        # one batch first, outside the windows (first-call allocation, kernel selection): the windows give rates
        forward_tokens(model, self.batches[:1], self.tokenizer.pad_token_id, self.ctx.device)
        with self.ctx.measure(f"rehearsal-forward/{name}") as window:  # timed inside: not the window's own edges
            started = time.perf_counter()
            tokens = forward_tokens(model, self.batches, self.tokenizer.pad_token_id, self.ctx.device)
            seconds = time.perf_counter() - started
        return _record(name, tokens, seconds, window)

    def _decode(self, name: str, model: Any) -> dict[str, Any]:
        # the same decode once first, outside the window: a process's first generate ran at half the rate of a
        # later one of the same shape on the H200 (eval_olmo2_1b's 1B: 512 tokens in 4.1 s; a 7B's second model
        # 1.9 s), which the per-task estimate then scaled to hours of generated tokens
        warm_started = time.perf_counter()
        decode_tokens(model, self.prompts, self.new_tokens, self.tokenizer, self.ctx.device)
        warmup_s = time.perf_counter() - warm_started
        with self.ctx.measure(f"rehearsal-decode/{name}") as window:
            started = time.perf_counter()
            tokens = decode_tokens(model, self.prompts, self.new_tokens, self.tokenizer, self.ctx.device)
            seconds = time.perf_counter() - started
        record = _record(name, tokens, seconds, window)
        record.update({"prompts": len(self.prompts), "prompt_tokens": len(self.prompts[0]),
                       "new_tokens": self.new_tokens, "warmup_seconds": round(warmup_s, 4)})
        return record

    def run(self) -> StageResult:
        records: list[dict[str, Any]] = []
        windows: list[dict[str, Any]] = []
        for name in self.ctx.progress.track(self.models, len(self.models), "eval (rehearsal: forward + decode)"):
            model = self._model(name)
            forward = self._forward(name, model)
            decode = self._decode(name, model)
            del model
            _release(self.ctx.device)
            windows += [forward.pop("window_record"), decode.pop("window_record")]
            records.append({**forward, "decode": decode})
            self.ctx.progress.log(f"eval: rehearsal {name}: forward {forward['tokens']:,} tokens in "
                                  f"{forward['seconds']:.1f} s, decode {decode['tokens']:,} tokens in "
                                  f"{decode['seconds']:.1f} s")
        return StageResult(tokens=sum(r["tokens"] for r in records), token_kind="rehearsal_forward_tokens",
                           outputs={"rehearsal": rehearsal_record(self.ctx.manifest.document), "note": NOTE,
                                    "forward_only": False, "models": records, "windows": windows,
                                    "batch_size": self.batch_size, "scores": {}, "full_evaluation": False})

    def cleanup(self) -> None:
        self.batches = []
        self.prompts = []


def _record(name: str, tokens: int, seconds: float, window: dict[str, Any]) -> dict[str, Any]:
    rate = tokens / seconds if seconds > 0 else None
    return {"model": name, "tokens": tokens, "seconds": seconds, "tokens_per_s": rate,
            "window": window.get("label"), "window_record": window}


def _release(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
