"""Synthetic-data SFT and the direct-SFT baseline: preprocessors on fixtures in each dataset's real schema, the
generation shard format, the filters, packing, the manifest rules, and (slow) the real CLI end to end, killed and
resumed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from distill_kit.assets.task import TINY_DIR
from distill_kit.generation.filters import (
    FilterSettings,
    apply_filters,
    extract_boxed,
    lsh_bands,
    math_answers_match,
)
from distill_kit.generation.shards import GenerationRecord, GenerationWriter, read_generations
from distill_kit.training.data import collate, load_examples
from distill_kit.training.models import load_model, load_tokenizer
from distill_kit.training.packing import pack_examples
from distill_kit.training.preprocess import Conversation, conversations, preprocess
from distill_kit.training.preprocess.base import ChatRenderer
from tests.conftest import REPO, kill_when, read_json, run_cli, spawn_cli

FIXTURES = REPO / "tests" / "fixtures" / "datasets"
TULU_REVISION = "b14afda60f1bbebe55d5d2fa1e4df5042f97f8be"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY_DIR / "tokenizer")


def ref(folder: str, fmt: str, **extra) -> dict:
    return {"source": "local", "id": str(FIXTURES / folder), "format": fmt, "split": "train", **extra}


def assistant_text(tokenizer, example) -> str:
    return tokenizer.decode(example.tokens[example.loss_mask.astype(bool)])


# ------------------------------------------------------------------------------------------------ preprocessors


@pytest.mark.parametrize("folder, fmt, extra, kept, dropped", [
    ("tulu-3-sft-mixture", "chat_messages", {}, 3,
     {"bad_message": 1, "empty_assistant_turn": 1, "missing_messages": 2, "no_assistant_turn": 1, "not_json": 1}),
    ("codeforces-cots", "codeforces_cots", {"subset": "solutions"}, 2,
     {"missing_generation": 1, "missing_prompt": 1, "truncated_generation": 1}),
    ("openr1-math-220k", "openr1_math", {}, 2, {"missing_problem": 1, "no_verified_generation": 2}),
    ("preference-pairs", "preference_pairs", {}, 2,
     {"chosen_missing_messages": 1, "chosen_rejected_prompt_mismatch": 1, "prompt_not_in_conversation": 1,
      "rejected_no_assistant_turn": 1}),
])
def test_preprocessors_keep_good_rows_and_count_malformed_ones(tokenizer, folder, fmt, extra, kept, dropped):
    processed = preprocess(ref(folder, fmt, **extra), FIXTURES / folder, tokenizer, 2048)
    report = processed.report
    assert report.rows_kept == kept == len(processed.examples)
    assert report.dropped == dropped
    assert report.rows_read == kept + sum(dropped.values())
    assert report.target_tokens == sum(e.target_tokens for e in processed.examples) > 0
    assert len(report.processed_sha256) == 64 and report.files[0]["sha256"]
    for example, conversation in zip(processed.examples, processed.conversations, strict=True):
        # the loss covers the assistant turns and their end-of-turn token, nothing else
        answers = "".join(f" {m['content'].strip()}<|eos|>" for m in conversation.messages if m["role"] == "assistant")
        assert assistant_text(tokenizer, example) == answers


def test_tulu_multi_turn_trains_every_assistant_turn_and_not_the_system_or_user(tokenizer):
    processed = preprocess(ref("tulu-3-sft-mixture", "chat_messages"), FIXTURES / "tulu-3-sft-mixture", tokenizer,
                           1024)
    multi = next(e for e, c in zip(processed.examples, processed.conversations, strict=True) if c.id == "flan_7")
    assert assistant_text(tokenizer, multi) == " four<|eos|> six<|eos|>"
    assert tokenizer.decode(multi.tokens).startswith("<|bos|>System: Answer briefly.\nUser: What is two plus two?")


def test_openr1_math_keeps_the_reference_answer_and_falls_back_to_a_verified_trace(tokenizer):
    rows, report = conversations(ref("openr1-math-220k", "openr1_math"), FIXTURES / "openr1-math-220k")
    assert [r.reference for r in rows] == ["\\frac{3}{4}", "1024"]
    assert rows[1].response.endswith("\\boxed{1024}")  # messages was null: the generation Math-Verify accepted
    assert rows[1].prompt == [{"role": "user", "content": "Compute $2^{10}$."}]


def test_the_processed_hash_follows_the_data_and_the_revision_is_recorded(tokenizer, tmp_path):
    data = tmp_path / "tulu" / "data"
    shutil.copytree(FIXTURES / "tulu-3-sft-mixture" / "data", data)
    first = preprocess(ref("tulu-3-sft-mixture", "chat_messages", revision=TULU_REVISION), data.parent, tokenizer, 64)
    again = preprocess(ref("tulu-3-sft-mixture", "chat_messages"), data.parent, tokenizer, 64)
    assert first.report.revision == TULU_REVISION
    assert first.report.processed_sha256 == again.report.processed_sha256
    text = (data / "train.jsonl").read_text().replace('"c b a"', '"c a b"')
    (data / "train.jsonl").write_text(text)
    changed = preprocess(ref("tulu-3-sft-mixture", "chat_messages"), data.parent, tokenizer, 64)
    assert changed.report.processed_sha256 != first.report.processed_sha256


def test_hub_parquet_in_the_asset_cache_reads_like_the_jsonl(tokenizer, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distill_kit.assets.resolve import asset_path, hf_cache_dir

    monkeypatch.setenv("DISTILL_KIT_CACHE", str(tmp_path / "cache"))
    folder = hf_cache_dir("allenai/tulu-3-sft-mixture", TULU_REVISION)
    (folder / "data").mkdir(parents=True)
    lines = (FIXTURES / "tulu-3-sft-mixture" / "data" / "train.jsonl").read_text().splitlines()
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row["messages"], list) or row["messages"] is None:  # parquet needs one column type
            rows.append(row)
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(pa.struct([("content", pa.string()),
                                                                               ("role", pa.string())]))),
                        ("source", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text("card")
    (folder / ".complete").write_text("")
    hub = {"source": "hf", "id": "allenai/tulu-3-sft-mixture", "revision": TULU_REVISION, "split": "train",
           "format": "chat_messages"}
    processed = preprocess(hub, asset_path(hub), tokenizer, 1024)
    assert processed.report.rows_kept == 3
    assert processed.report.dropped == {"bad_message": 1, "empty_assistant_turn": 1, "missing_messages": 1,
                                        "no_assistant_turn": 1}
    assert processed.report.files == [{"name": "train-00000-of-00001.parquet",
                                       "bytes": (folder / "data" / "train-00000-of-00001.parquet").stat().st_size}]
    jsonl = preprocess(ref("tulu-3-sft-mixture", "chat_messages"), FIXTURES / "tulu-3-sft-mixture", tokenizer, 1024)
    assert processed.report.processed_sha256 == jsonl.report.processed_sha256
    # and load_examples, which the teacher stages use, is wired to the same preprocessor
    assert len(load_examples(hub, asset_path(hub), tokenizer, 1024)) == 3


def test_a_template_without_generation_tags_gets_the_same_assistant_tokens(tokenizer):
    conversation = Conversation([{"role": "system", "content": "s"}, {"role": "user", "content": "reverse a b"},
                                 {"role": "assistant", "content": "b a"}, {"role": "user", "content": "again"},
                                 {"role": "assistant", "content": "b a"}], 0)
    tagged_ids, tagged_mask = ChatRenderer(tokenizer).training_ids(conversation)
    plain = load_tokenizer(TINY_DIR / "tokenizer")
    plain.chat_template = plain.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    ids, mask = ChatRenderer(plain).training_ids(conversation)
    assert sum(mask) == sum(tagged_mask) == 6  # " b", " a", EOS twice
    assert plain.decode([i for i, m in zip(ids, mask, strict=True) if m]) == " b a<|eos|> b a<|eos|>"


def test_tiny_task_preprocessor_gives_the_examples_kd_trains_on(tokenizer):
    task_ref = {"source": "builtin", "id": "tiny-task", "split": "train", "format": "prompt_answer"}
    old = load_examples(task_ref, TINY_DIR / "task", tokenizer, 64)
    new = preprocess(task_ref, TINY_DIR / "task", tokenizer, 64).examples
    assert len(old) == len(new) == 4000
    assert all(np.array_equal(a.tokens, b.tokens) and np.array_equal(a.loss_mask, b.loss_mask)
               for a, b in zip(old, new, strict=True))


# ------------------------------------------------------------------------------------------------------ filters


def record(i: int, completion: str, reference: str | None = None, ids: int | None = None, prompt: str = "p",
           finish: str = "stop", sample: int = 0) -> GenerationRecord:
    n = len(completion.split()) if ids is None else ids
    return GenerationRecord(prompt_index=i, sample=sample, messages=[{"role": "user", "content": prompt}],
                            reference=reference, prompt_tokens=3, completion=completion, completion_ids=list(range(n)),
                            generated_tokens=n + (finish == "stop"), finish_reason=finish)


def test_filters_run_in_order_and_count_what_each_dropped():
    text = "the quick brown fox jumps over the lazy dog near the river bank today"
    records = [
        record(0, " c b a", "c b a"),
        record(1, " c a b", "c b a"),  # wrong answer
        record(2, " c b a", "c b a"),  # same prompt and completion as 0: exact duplicate
        record(3, "", "x"),  # too short
        record(4, " a b c d e f g h", "a", finish="length"),  # unfinished
        record(5, text, prompt="q", reference=text),
        record(6, text.replace("today", "now"), prompt="q", reference=text.replace("today", "now")),  # near dup
    ]
    settings = FilterSettings(min_tokens=1, max_tokens=20, drop_unfinished=True, answer_check="exact",
                              exact_dedup=True, near_dedup=True, near_threshold=0.7, near_ngram=3, near_num_perm=64)
    outcome = apply_filters(records, settings)
    assert [r.prompt_index for r in outcome.kept] == [0, 5]
    counts = {c.name: (c.input, c.kept, c.dropped, c.reasons) for c in outcome.counts}
    assert counts == {"length": (7, 5, 2, {"too_short": 1, "unfinished": 1}),
                      "answer": (5, 4, 1, {"wrong_answer": 1}),
                      "exact_dedup": (4, 3, 1, {"duplicate": 1}),
                      "near_dedup": (3, 2, 1, {"near_duplicate": 1})}
    assert {(d["prompt_index"], d["filter"]) for d in outcome.dropped} == {(3, "length"), (4, "length"),
                                                                          (1, "answer"), (2, "exact_dedup"),
                                                                          (6, "near_dedup")}


def test_near_dedup_keeps_distinct_samples_and_is_deterministic():
    words = [f"w{i}" for i in range(400)]
    records = [record(i, " ".join(words[i * 20:(i + 1) * 20])) for i in range(20)]
    settings = FilterSettings(exact_dedup=False, near_dedup=True, near_threshold=0.5, near_ngram=2,
                              dedup_on="completion")
    assert len(apply_filters(records, settings).kept) == 20
    copies = records + [record(100 + i, r.completion + " extra") for i, r in enumerate(records[:5])]
    outcome = apply_filters(copies, settings)
    assert len(outcome.kept) == 20 and outcome.counts[-1].dropped == 5
    assert [r.prompt_index for r in apply_filters(copies, settings).kept] == [r.prompt_index for r in outcome.kept]


@pytest.mark.parametrize("text, reference, ok", [
    ("so $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}", True),
    ("\\boxed{0.75}", "\\dfrac{3}{4}", True),
    ("\\boxed{1,024}", "1024", True),
    ("first \\boxed{2} then \\boxed{3}", "3", True),
    ("\\boxed{x = 2}", "x=2", True),
    ("\\boxed{20}", "21", False),
])
def test_math_answer_check(text, reference, ok):
    assert math_answers_match(extract_boxed(text), reference) is ok


def test_math_filter_drops_samples_without_a_final_answer():
    records = [record(0, "no box here", "1"), record(1, "\\boxed{1}", "1"), record(2, "\\boxed{2}", None)]
    outcome = apply_filters(records, FilterSettings(answer_check="math", exact_dedup=False))
    assert [r.prompt_index for r in outcome.kept] == [1]
    assert outcome.counts[1].reasons == {"no_final_answer": 1, "no_reference": 1}


def test_lsh_bands_stay_at_or_below_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_bands(128, threshold)
        assert bands * rows <= 128 and (1 / bands) ** (1 / rows) <= threshold


# ----------------------------------------------------------------------------------------------------- shards


def test_generation_shards_resume_after_the_last_whole_shard(tmp_path):
    folder = tmp_path / "generations"
    identity = {"teacher": "t", "decoding": {"do_sample": False}}
    writer = GenerationWriter.open(folder, identity, 2)
    writer.write_shard(0, 2, [record(0, "a"), record(1, "b")])
    writer.write_shard(2, 2, [record(2, "c"), record(3, "d", finish="length")])
    first_sha = writer.index.shards[0].sha256
    (folder / ".shard-00002.jsonl.x.tmp").write_text("half")  # what a kill mid-write leaves
    resumed = GenerationWriter.open(folder, identity, 2)
    assert resumed.prompts_done == 4 and not list(folder.glob(".shard-*"))
    with pytest.raises(ValueError, match="incomplete"):
        read_generations(folder)
    index = resumed.close()
    assert index.totals()["unfinished"] == 1 and index.shards[0].sha256 == first_sha
    assert [r.completion for r in read_generations(folder)[1]] == ["a", "b", "c", "d"]

    (folder / "shard-00001.jsonl").write_text("tampered\n")
    with pytest.raises(ValueError, match="shard-00001.jsonl is corrupt"):
        read_generations(folder)
    damaged = GenerationWriter.open(folder, identity, 2)  # the damaged shard is regenerated, the good one kept
    assert damaged.prompts_done == 2 and damaged.discarded == ["shard-00001.jsonl"]
    assert not (folder / "shard-00001.jsonl").exists() and (folder / "shard-00000.jsonl").exists()
    fresh = GenerationWriter.open(folder, {**identity, "decoding": {"do_sample": True}}, 2)
    assert fresh.prompts_done == 0 and not list(folder.glob("shard-*"))


# ---------------------------------------------------------------------------------------------------- packing


def test_packed_rows_give_each_sequence_the_logits_it_has_alone(tokenizer):
    import torch

    examples = preprocess({"source": "builtin", "id": "tiny-task", "split": "train", "format": "prompt_answer",
                           "max_examples": 12}, TINY_DIR / "task", tokenizer, 64).examples
    packed = pack_examples(examples, 64)
    assert len(packed) < len(examples) and all(len(p.tokens) <= 64 for p in packed)
    assert sum(p.target_tokens for p in packed) == sum(e.target_tokens for e in examples)
    model = load_model(TINY_DIR / "student", "cpu", "fp32")
    batch = collate(packed[:2], int(tokenizer.pad_token_id))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, **batch.model_inputs("cpu")).logits
        offset = 0
        for example in examples:  # the first packed row holds the first examples, in order
            n = len(example.tokens)
            if offset + n > len(packed[0].tokens):
                break
            alone = model(input_ids=torch.tensor(example.tokens)[None]).logits[0]
            assert torch.allclose(logits[0, offset:offset + n], alone, atol=1e-5)
            offset += n
    assert offset == len(packed[0].tokens)


# ------------------------------------------------------------------------------------------------ decoding


def test_hf_sampling_is_a_function_of_the_batch_seed_and_greedy_matches_the_eval(tokenizer):
    from distill_kit.assets.task import encode_example, exact_match_accuracy, load_rows
    from distill_kit.generation.decode import DecodingSettings, HFBackend, batch_seed

    rows = load_rows(TINY_DIR / "task" / "eval.jsonl")[:6]
    prompts = [encode_example(tokenizer, r)[0] for r in rows]
    backend = HFBackend(TINY_DIR / "teacher", "cpu", int(tokenizer.pad_token_id), int(tokenizer.eos_token_id))
    hot = DecodingSettings(do_sample=True, temperature=3.0, top_p=1.0, top_k=0, max_new_tokens=8, num_samples=3)

    def ids(seed):
        return [[g.ids for g in samples] for samples in backend.generate(prompts, hot, seed, 64)]

    assert ids(batch_seed(42, 0)) == ids(batch_seed(42, 0))
    assert ids(batch_seed(42, 0)) != ids(batch_seed(42, 6))
    assert all(len(samples) == 3 for samples in ids(1))
    greedy = backend.generate(prompts, DecodingSettings(do_sample=False, max_new_tokens=16), 0, 64)
    expected = exact_match_accuracy(backend.model, tokenizer, rows).samples
    assert [tokenizer.decode(s[0].ids) for s in greedy] == [e["output"] for e in expected]
    assert all(s[0].generated_tokens == len(s[0].ids) + int(s[0].stopped) for s in greedy)


def test_each_answer_budget_is_its_own_prompt_s_not_its_batch_mates(tokenizer):
    """A prompt's answer may run to max_total minus its own length. Cutting the whole batch at max_total minus its
    longest prompt (as before) cut a short prompt's answer by whichever long prompt shared its batch."""
    from distill_kit.generation.decode import DecodingSettings, HFBackend

    backend = HFBackend(TINY_DIR / "teacher", "cpu", int(tokenizer.pad_token_id), int(tokenizer.eos_token_id))
    short, long = [5, 6, 7, 8, 9], list(range(5, 65))  # 5 and 60 tokens; max_total 64 leaves the long one 4
    greedy = DecodingSettings(do_sample=False, max_new_tokens=16)
    # a rehearsal's drawn answers (10 tokens each, ending with EOS where they fit)
    drawn = backend.generate([short, long], greedy, 0, 64, answers=[(10, True), (10, True)])
    assert drawn[0][0].generated_tokens == 10 and drawn[0][0].stopped
    assert drawn[1][0].generated_tokens == 4 and not drawn[1][0].stopped  # cut at its own budget, unfinished
    # the real path: the short prompt's greedy answer is the one it gets alone, the long one's at most 4 tokens
    never = DecodingSettings(do_sample=False, max_new_tokens=12)
    backend.eos_id = -1  # no EOS ends an answer: each runs to its budget
    together = backend.generate([short, long], never, 0, 64)
    alone = backend.generate([short], never, 0, 64)
    assert len(together[0][0].ids) == 12 and together[0][0].ids == alone[0][0].ids
    assert len(together[1][0].ids) == 4


# ---------------------------------------------------------------------------------------------- manifest rules


@pytest.mark.parametrize("overrides, path", [
    (["teacher.generation.do_sample=false", "teacher.generation.num_samples=2"], "$.teacher.generation.num_samples"),
    (["teacher.filters.answer_check=math"], "$.teacher.filters.answer_check"),
    (["teacher.generation.min_tokens=20", "teacher.generation.max_tokens=10"], "$.teacher.generation.min_tokens"),
    (["teacher.filters.near_dedup.threshold=1.5"], "$.teacher.filters.near_dedup.threshold"),
])
def test_bad_generation_settings_are_named_by_path(overrides, path):
    args = [a for o in overrides for a in ("--set", o)]
    result = run_cli("validate", "smoke-sft", *args)
    assert result.returncode == 2 and path in result.output, result.output


def test_packing_is_refused_for_kd():
    result = run_cli("validate", "smoke-kd", "--set", "student.packing=true")
    assert result.returncode == 2 and "$.student.packing" in result.output


@pytest.mark.parametrize("name", ["smoke-sft", "smoke-baseline", "baseline_sft_1b", "baseline_sft_7b",
                                  "baseline_sft_13b"])
def test_shipped_sft_manifests_validate(name):
    result = run_cli("validate", name)
    assert result.returncode == 0, result.output


# ------------------------------------------------------------------------------------------- end to end (slow)

QUICK = ["--set", "data.train.max_examples=600", "--set", "teacher.generation.batch_size=100",
         "--set", "teacher.generation.shard_prompts=200", "--set", "student.batch_size=32",
         "--set", "student.token_budget=12000", "--set", "student.checkpoint_every_steps=5",
         "--set", "energy.idle_seconds=1", "--set", "energy.burn_in_seconds=0", "--set", "eval.limit=40"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "sft"
    result = run_cli("run", "smoke-sft", "--run-dir", str(run_dir), "--runtime", "local", *QUICK)
    assert result.returncode == 0, result.output
    return run_dir


@pytest.mark.slow
def test_sft_run_summaries_show_generated_tokens_filter_counts_student_tokens_and_scores(sft_run):
    summary = read_json(sft_run / "summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["prerun", "teacher", "filter", "student", "eval"]
    teacher = read_json(sft_run / "stages" / "teacher" / "summary.json")
    assert teacher["token_kind"] == "generated_tokens" and teacher["j_per_token"] is not None
    index, records = read_generations(sft_run / "stages" / "teacher" / "generations")
    assert teacher["tokens"] == sum(r.generated_tokens for r in records) > 0
    assert teacher["outputs"]["samples"] == len(records) == 600 and len(index.shards) == 3
    assert teacher["outputs"]["prompt_tokens"] == sum(r.prompt_tokens for r in records)
    filtered = read_json(sft_run / "stages" / "filter" / "summary.json")["outputs"]
    assert [f["name"] for f in filtered["filters"]] == ["length", "answer", "exact_dedup", "near_dedup"]
    assert filtered["filters"][0]["input"] == 600
    assert filtered["kept_samples"] == filtered["filters"][-1]["kept"] >= 480  # the tiny teacher is >= 90% right
    kept_lines = (sft_run / "stages" / "filter" / "data" / "kept.jsonl").read_text().splitlines()
    assert len(kept_lines) == filtered["kept_samples"]
    student = read_json(sft_run / "stages" / "student" / "summary.json")
    assert student["tokens"] == 12000 and student["token_kind"] == "trained_tokens"
    assert student["outputs"]["data"]["examples"] == filtered["kept_samples"]
    assert student["outputs"]["loss"] == {"ce_weight": 1.0, "kd_weight": 0.0}
    assert set(summary["quality"]) == {"teacher", "student_initial", "student"}
    assert summary["quality"]["teacher"]["tiny_task"] >= 0.9


@pytest.mark.slow
def test_baseline_trains_on_the_original_data_with_no_teacher(tmp_path):
    run_dir = tmp_path / "baseline"
    result = run_cli("run", "smoke-baseline", "--run-dir", str(run_dir), "--runtime", "local", *QUICK[:2], *QUICK[6:])
    assert result.returncode == 0, result.output
    summary = read_json(run_dir / "summary.json")
    assert [s["stage"] for s in summary["stages"]] == ["prerun", "student", "eval"]
    student = read_json(run_dir / "stages" / "student" / "summary.json")["outputs"]
    assert student["data"]["rows_read"] == 600 and student["data"]["dropped"] == {}
    assert student["trained_tokens"] == 12000 and len(student["data"]["processed_sha256"]) == 64
    assert set(summary["quality"]) == {"student_initial", "student"}


def _popen(run_dir: Path, resume: bool) -> subprocess.Popen:
    return spawn_cli("run", "smoke-sft", "--run-dir", str(run_dir), "--runtime", "local", *QUICK,
                     *(["--resume"] if resume else []))


def _shards_written(run_dir: Path) -> int:
    index = run_dir / "stages" / "teacher" / "generations" / "index.json"
    try:
        return len(read_json(index)["shards"]) if index.exists() else 0
    except json.JSONDecodeError:
        return 0


@pytest.mark.slow
def test_killed_in_generation_and_in_training_then_resumed_matches_an_uninterrupted_run(tmp_path, sft_run):
    run_dir = tmp_path / "killed"
    kill_when(_popen(run_dir, resume=False), lambda: _shards_written(run_dir) >= 1)
    assert 1 <= _shards_written(run_dir) < 3 and not (run_dir / "summary.json").exists()

    latest = run_dir / "stages" / "student" / "checkpoints" / "latest"
    kill_when(_popen(run_dir, resume=True), lambda: latest.exists() and latest.read_text().strip() >= "step-0000005")
    resumed = run_cli("run", "smoke-sft", "--run-dir", str(run_dir), "--resume", "--runtime", "local", *QUICK)
    assert resumed.returncode == 0, resumed.output

    teacher = read_json(run_dir / "stages" / "teacher" / "summary.json")
    reference = read_json(sft_run / "stages" / "teacher" / "summary.json")
    assert [a["status"] for a in teacher["attempts"]] == ["interrupted", "finished"]
    assert teacher["outputs"]["resumed_after_prompts"] >= 200
    assert teacher["outputs"]["generations"]["shard_sha256"] == reference["outputs"]["generations"]["shard_sha256"]
    assert teacher["tokens"] == reference["tokens"]
    for name in ("kept.jsonl", "dropped.jsonl"):
        assert (run_dir / "stages/filter/data" / name).read_bytes() == (sft_run / "stages/filter/data" / name
                                                                         ).read_bytes()
    student = read_json(run_dir / "stages" / "student" / "summary.json")
    assert [a["status"] for a in student["attempts"]] == ["interrupted", "finished"]
    assert student["outputs"]["resumed_from_step"] >= 5
    ref_student = read_json(sft_run / "stages" / "student" / "summary.json")["outputs"]
    assert student["outputs"]["final"]["weights_sha256"] == ref_student["final"]["weights_sha256"]
    assert [p["loss"] for p in student["outputs"]["loss_curve"]] == [p["loss"] for p in ref_student["loss_curve"]]


@pytest.mark.slow
def test_sft_pipeline_on_chat_data_in_the_tulu_schema(tmp_path):
    run_dir = tmp_path / "chat"
    result = run_cli("run", "smoke-sft", "--run-dir", str(run_dir), "--runtime", "local",
                     "--set", "data.train.source=local", "--set", f"data.train.id={FIXTURES / 'tulu-3-sft-mixture'}",
                     "--set", "data.train.format=chat_messages", "--set", "teacher.filters.answer_check=none",
                     # the tiny teacher knows only letter tasks: on chat prompts it runs to max_new_tokens
                     "--set", "teacher.filters.drop_unfinished=false",
                     "--set", "student.token_budget=100", *QUICK[-6:])
    assert result.returncode == 0, result.output
    teacher = read_json(run_dir / "stages" / "teacher" / "summary.json")["outputs"]
    assert teacher["data"]["rows_kept"] == 3 and teacher["data"]["dropped"]["missing_messages"] == 2
    _, records = read_generations(run_dir / "stages" / "teacher" / "generations")
    assert [r.id for r in records] == ["oasst1_101", "flan_7", "no_robots_3"]
    assert records[1].messages[-1] == {"role": "user", "content": "And three plus three?"}  # up to the last answer
    assert records[1].prompt_tokens == len(load_tokenizer(TINY_DIR / "tokenizer").apply_chat_template(
        records[1].messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    filtered = read_json(run_dir / "stages" / "filter" / "summary.json")["outputs"]
    student = read_json(run_dir / "stages" / "student" / "summary.json")["outputs"]
    assert student["data"]["format"] == "chat_messages"
    assert student["data"]["examples"] == filtered["kept_samples"]
