"""kd_32b_1b rehearsed end to end on one GPU: random weights of the OLMo-2 32B teacher and 1B student shapes, random
token streams of tulu-3's length distribution, every stage of the kit's KD pipeline run and measured, bundled and
verified; and, in the same process, a bare forward of the 32B shape over the very batches the teacher cached.

Figures: ``teacher_32b_tokens_per_s`` (steady state, the first 20% of batches left out),
``teacher_32b_ratio_vs_bare_forward`` (bare forward time / teacher stage time over the same batches, >= 0.95; the
bare forward runs first, on 6% of the teacher's batches after its first 20%, so a call cut short still has it),
``teacher_32b_j_per_token``, ``student_1b_kd_tokens_per_s`` (trained tokens, steady state),
``student_1b_kd_mfu`` (benchmarks/kd_step.py's convention: 6 x matmul parameters + 12 x layers x hidden x seq per
input token, against the dense bf16 peak), ``peak_gib_<stage>`` (torch's peak allocated memory), ``bundle_verified``
(1 when verify has no FAIL).

``--tiny`` runs the same code on the smoke manifest's tiny shapes (CPU, seconds): the test suite runs it so the GPU
sees a proven path. Progress lines go to stdout and the result file is rewritten after each phase.

Time on one H200, estimated: the teacher's batches of 4 are padded to their longest sequence (tulu-3's assumed
lengths: about 60% real tokens), so 2M real teacher tokens take about 6 minutes at the 32B anchor rate, the 2M
trained student tokens (about 3.3M input tokens) about 2 minutes with compilation: likely over the 10-minute limit
of one call with set-up, bare forward and verify. ``--phase teacher`` then ``--phase rest`` (same machine, still
warm; the run waits unfinished in runs/bench-rehearsal) split it in two calls; the second resumes the same run,
as ``run --resume`` would, and bundles and verifies it. ``--teacher-tokens`` / ``--student-tokens`` shorten it
(the issue asks for at least 2M each).

    python -m benchmarks.rehearsal [--tiny] [--teacher-tokens 2M] [--student-tokens 2M] [--phase all|teacher|rest]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import write_result
from distill_kit.rehearsal.settings import parse_token_count

NAME = "rehearsal"
TARGETS = {"teacher_32b_ratio_vs_bare_forward": ">= 0.95", "bundle_verified": "== 1"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] rehearsal: {message}", flush=True)


def settings(args: argparse.Namespace) -> tuple[str, dict[str, int], list[str]]:
    if args.tiny:
        caps = {"teacher_tokens": args.teacher_tokens or 20_000, "student_tokens": args.student_tokens or 20_000,
                "eval_tokens": 2048}
        # batches of 8 (the smoke manifest has 64): enough teacher batches at 20k tokens for a steady range
        return "smoke-kd", caps, ["energy.idle_seconds=1", "energy.burn_in_seconds=0", "teacher.batch_size=8"]
    caps = {"teacher_tokens": args.teacher_tokens or 2_000_000, "student_tokens": args.student_tokens or 2_000_000,
            "eval_tokens": 8192}
    return "kd_32b_1b", caps, ["energy.idle_seconds=5", "energy.burn_in_seconds=2"]


def steady_range(batches: int, share: float) -> tuple[int, int]:
    """Batch indices (a, b]: after the first 20% of the teacher's batches, ``share`` of them (at least 3), before
    its last (the pipelined loop's drain)."""
    first = max(1, int(batches * 0.2))
    last = min(batches - 2, first + max(3, int(batches * share)))
    if last <= first:
        raise RuntimeError(f"the teacher has too few batches ({batches}) for a steady window")
    return first, last


def bare_forward(document: dict[str, Any], device: str, share: float) -> dict[str, Any]:
    """A bare forward (logits only) of the teacher's shape over a steady range of the very batches the teacher
    stage will cache (the streams are a function of the manifest's seed): seconds, tokens, range."""
    import torch

    from distill_kit.distributed.sharding import length_grouped_batches
    from distill_kit.logits.teacher import pad_batch
    from distill_kit.manifest.settings import Settings
    from distill_kit.rehearsal import RehearsalSettings
    from distill_kit.rehearsal.substitute import random_model, synthetic_tokenizer, train_streams

    rehearsal = RehearsalSettings.from_document(document)
    tokenizer, _ = synthetic_tokenizer(document, Path(tempfile.mkdtemp()))
    teacher = Settings.of(document).teacher
    max_len = teacher.max_seq_len
    examples = train_streams(document, tokenizer, max_len, rehearsal.teacher_tokens)
    size = teacher.batch_size
    lengths = [len(e.tokens) for e in examples]
    batches = [[examples[i] for i in batch] for batch in length_grouped_batches(lengths, 0, len(examples), size,
                                                                                 max_len)]
    first, last = steady_range(len(batches), share)
    model = random_model(document["models"]["teacher"], document["name"], device, "auto", rehearsal.seed)
    ids = [pad_batch([e.tokens for e in batch], tokenizer.pad_token_id)[0].to(device) for batch in batches]
    with torch.no_grad():
        for warm in ids[:3]:
            model(input_ids=warm, use_cache=False)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in ids[first + 1 : last + 1]:
            model(input_ids=batch, use_cache=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    tokens = sum(len(e.tokens) for batch in batches[first + 1 : last + 1] for e in batch)
    del model, ids
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"batches": [first + 1, last], "of": len(batches), "tokens": tokens, "bare_seconds": seconds,
            "bare_tokens_per_s": tokens / seconds}


def student_mfu(document: dict[str, Any], outputs: dict[str, Any], trained_per_s: float | None) -> float | None:
    import torch

    from distill_kit.rehearsal.shapes import model_config
    from distill_kit.training.trainer import model_flops_per_token, peak_flops

    peak, _ = peak_flops("cuda" if torch.cuda.is_available() else "cpu")
    if not peak or not trained_per_s:
        return None
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(document["models"]["student"], document["name"]))
    sequences = outputs["steps"] * outputs["effective_batch"]["sequences"]
    mean_seq = outputs["input_tokens"] / max(1, sequences)
    input_per_s = trained_per_s * outputs["input_tokens"] / max(1, outputs["trained_tokens"])
    return model_flops_per_token(model, mean_seq) * input_per_s / peak


def verify(run_dir: Path, work: Path) -> dict[str, Any]:
    from distill_kit.bundle.keys import generate_keypair, load_private_key
    from distill_kit.bundle.pack import pack_run
    from distill_kit.bundle.verify import verify_bundle

    pair = generate_keypair(work / "key")
    pack_run(run_dir, work / "bundle.tar", load_private_key(pair.private_path))
    report = verify_bundle(work / "bundle.tar", [pair.public_path])
    return {"ok": report.ok, "results": [r.to_dict() for r in report.results]}


def teacher_figures(rehearsed: Any, bare: dict[str, Any], figures: dict[str, float | None],
                    details: dict[str, Any]) -> None:
    """Teacher figures and the ratio to the bare forward over the same batches."""
    from distill_kit.runner.estimate import calibrations

    stages = {c.stage: c for c in calibrations(rehearsed.run_dir, rehearsed.timing)}
    details["stages"] = {name: c.to_dict() for name, c in stages.items()}
    figures["teacher_32b_tokens_per_s"] = stages["teacher"].tokens_per_s
    figures["teacher_32b_j_per_token"] = stages["teacher"].j_per_token
    loop = rehearsed.timing.loop("teacher:")
    assert loop is not None and len(loop.marks) == bare["of"], "the teacher did not cache the batches rehearsed"
    first, last = bare["batches"][0] - 1, bare["batches"][1]
    teacher_s = loop.marks[last][0] - loop.marks[first][0]  # the same batches inside the teacher stage
    figures["teacher_32b_ratio_vs_bare_forward"] = bare["bare_seconds"] / teacher_s if teacher_s > 0 else None
    bare["teacher_seconds"] = teacher_s
    say(f"teacher {figures['teacher_32b_tokens_per_s']:,.0f} tokens/s, ratio to the bare forward "
        f"{figures['teacher_32b_ratio_vs_bare_forward']:.3f}")


def student_figures(rehearsed: Any, figures: dict[str, float | None], details: dict[str, Any]) -> None:
    from distill_kit._io import read_json
    from distill_kit.rehearsal.memory import plan_run
    from distill_kit.runner.estimate import calibrations

    student = next(c for c in calibrations(rehearsed.run_dir, rehearsed.timing) if c.stage == "student")
    details["stages"]["student"] = student.to_dict()
    figures["student_1b_kd_tokens_per_s"] = student.tokens_per_s
    resolved = read_json(rehearsed.run_dir / "manifest.resolved.json")
    outputs = read_json(rehearsed.run_dir / "stages" / "student" / "summary.json")["outputs"]
    figures["student_1b_kd_mfu"] = student_mfu(resolved, outputs, student.tokens_per_s)
    details["planned_gib"] = {p.stage: p.total_gib for p in plan_run(resolved, None)}  # vs torch's peak allocated
    say(f"student {student.tokens_per_s or 0:,.0f} trained tokens/s, MFU {figures['student_1b_kd_mfu']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rehearsal")
    parser.add_argument("--tiny", action="store_true", help="the smoke manifest's tiny shapes (CPU, seconds)")
    parser.add_argument("--teacher-tokens", type=parse_token_count, default=None)
    parser.add_argument("--student-tokens", type=parse_token_count, default=None)
    parser.add_argument("--phase", choices=("all", "teacher", "rest"), default="all",
                        help="all in one call; or two calls on the same machine: teacher (bare forward, prerun, "
                        "teacher), then rest (resumes: student, eval, bundle, verify)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the run and bundle (default: a temp; "
                        "with --phase, runs/bench-rehearsal, kept between the two calls)")
    args = parser.parse_args(argv)
    import json

    import torch

    from distill_kit.cli.progress import RichProgress
    from distill_kit.runner.rehearse import rehearsal_manifest, rehearse
    from distill_kit.runner.timing import TimingProgress

    device = "cuda" if torch.cuda.is_available() else "cpu"
    manifest, caps, overrides = settings(args)
    default_work = Path("runs/bench-rehearsal") if args.phase != "all" else Path(tempfile.mkdtemp(prefix="rehearsal-"))
    work = args.work or default_work
    state_file = work / "state.json"
    started = time.perf_counter()
    timing = TimingProgress(RichProgress())
    if args.phase == "rest":  # (1') the first call's measurements
        state = json.loads(state_file.read_text())
        figures, details, bare = state["figures"], state["details"], state["details"]["bare_forward"]
        manifest, caps, overrides = details["manifest"], details["caps"], details["overrides"]  # the same run
        timing.restore(state["loops"])
        peaks = state["peaks"]
    else:  # (1) the bare forward first, over the very batches the teacher will cache
        work.mkdir(parents=True, exist_ok=True)
        figures, details, peaks = {}, {"manifest": manifest, "caps": caps, "overrides": overrides,
                                       "device": device}, {}
        say(f"{manifest} on {device}, caps {caps}, run dir {work / 'run'}, phase {args.phase}")
        write_result(NAME, figures, TARGETS, {**details, "phase": "started"})
        bare = bare_forward(rehearsal_manifest(manifest, caps, overrides).document, device,
                            0.06 if device == "cuda" else 0.5)
        details["bare_forward"] = bare
        say(f"bare forward of the teacher shape over its batches {bare['batches']} of {bare['of']}: "
            f"{bare['bare_tokens_per_s']:,.0f} tokens/s")
        write_result(NAME, figures, TARGETS, {**details, "phase": "bare forward measured"})
    # (2) the rehearsal: whole, or up to the teacher, or resumed after it
    rehearsed = rehearse(manifest, work / "run", caps, overrides, stop_after="teacher" if args.phase == "teacher"
                         else None, resume=args.phase == "rest", timing=timing)
    # a resumed call reads 0 for the stages it skipped: the first call's peaks stand for those
    peaks.update({stage: gib for stage, gib in rehearsed.peak_gib.items() if stage not in peaks})
    details["peak_gib"] = peaks
    figures.update({f"peak_gib_{stage}": gib for stage, gib in peaks.items()})
    if args.phase != "rest":
        teacher_figures(rehearsed, bare, figures, details)
    if args.phase == "teacher":
        state_file.write_text(json.dumps({"figures": figures, "details": details, "loops": timing.to_list(),
                                          "peaks": peaks}))
        (work / "loops.json").write_text(json.dumps(timing.to_list()))
        write_result(NAME, figures, TARGETS, {**details, "phase": "teacher done (run --phase rest next)"})
        return 0
    student_figures(rehearsed, figures, details)
    # every loop's (time, tokens) marks, for benchmarks/estimate_accuracy.py --measured and for reading the steps
    (work / "loops.json").write_text(json.dumps(timing.to_list()))
    details["run_seconds"] = time.perf_counter() - started
    write_result(NAME, figures, TARGETS, {**details, "phase": "rehearsed"})
    # (3) bundle and verify
    details["verify"] = verify(rehearsed.run_dir, work)
    figures["bundle_verified"] = 1.0 if details["verify"]["ok"] else 0.0
    fails = [r for r in details["verify"]["results"] if r["status"] != "PASS"]
    say(f"bundle verified: {details['verify']['ok']} (not PASS: {[(r['name'], r['status']) for r in fails]})")
    write_result(NAME, figures, TARGETS, {**details, "phase": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
