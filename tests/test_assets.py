"""The packaged tiny assets: intact, loadable, deterministic, and as good (or as bad) as recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from distill_kit.assets import make_assets as ma
from distill_kit.assets.task import (
    TINY_DIR,
    EvalResult,
    TaskRow,
    answer_is_correct,
    encode_example,
    exact_match_accuracy,
    format_example,
    load_rows,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REQUIRED = [
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "teacher/config.json",
    "teacher/model.safetensors",
    "teacher/generation_config.json",
    "student/config.json",
    "student/model.safetensors",
    "student/generation_config.json",
    "task/train.jsonl",
    "task/eval.jsonl",
]

ENGLISH_SAMPLES = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins with 4.",
    "Which of the following best describes the function of mitochondria?\nA. storage\nB. energy\nC. motion",
    "Write a 300+ word essay, in ALL CAPITAL LETTERS, without using the letter 'e'. P.S. add a postscript.",
    "  leading and trailing spaces,\ttabs,\r\nCRLF, and   runs   of spaces  ",
    "Unicode: café, naïve, Straße, Ελληνικά, 中文, 😀🚀, and a zero-width\u200bjoiner.",
    '{"json": [1, 2.5, null, true], "path": "C:\\\\dir\\\\file.txt"} <html> x <= y && z != 0 </html>',
]


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((TINY_DIR / "ASSETS.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(TINY_DIR / "tokenizer")


@pytest.fixture(scope="module")
def eval_rows() -> list[TaskRow]:
    return load_rows(TINY_DIR / "task" / "eval.jsonl")


@pytest.fixture(scope="module")
def train_rows() -> list[TaskRow]:
    return load_rows(TINY_DIR / "task" / "train.jsonl")


@pytest.fixture(scope="module")
def teacher():
    return transformers.LlamaForCausalLM.from_pretrained(TINY_DIR / "teacher")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ files


def test_required_files_present_and_hashes_match(record: dict) -> None:
    files = record["files"]
    for rel in REQUIRED:
        assert rel in files, f"{rel} missing from ASSETS.json"
    on_disk = {
        p.relative_to(TINY_DIR).as_posix()
        for p in TINY_DIR.rglob("*")
        if p.is_file() and p.name != "ASSETS.json" and "__pycache__" not in p.parts
    }
    assert on_disk == set(files), "files on disk differ from those ASSETS.json lists"
    for rel, digest in files.items():
        assert _sha256(TINY_DIR / rel) == digest, f"{rel} does not match its sha256 in ASSETS.json"


def test_assets_record_fields_and_size(record: dict) -> None:
    assert record["schema_version"] == 1
    assert record["made_by"] == "distill_kit.assets.make_assets"
    assert record["seed"] == ma.SEED
    assert record["torch"] and record["transformers"]
    assert record["teacher_eval_exact_match"] >= 0.9
    assert record["student_eval_exact_match"] <= 0.05
    teacher_n = record["params"]["teacher"]["n_params"]
    student_n = record["params"]["student"]["n_params"]
    assert 500_000 <= teacher_n <= 1_500_000
    assert 50_000 <= student_n <= 300_000
    total = sum(p.stat().st_size for p in TINY_DIR.rglob("*") if p.is_file())
    assert total < 8_000_000


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_special_tokens(tokenizer) -> None:
    assert len(tokenizer) == ma.VOCAB_SIZE
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("hello")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids


@pytest.mark.parametrize("text", ENGLISH_SAMPLES)
def test_tokenizer_round_trips_any_text(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_round_trips_task_text_one_token_per_letter(tokenizer, train_rows, eval_rows) -> None:
    for row in train_rows[:200] + eval_rows:
        prompt_text, completion_text = format_example(row)
        for text in (prompt_text, completion_text):
            assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
        completion = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        assert len(completion) == len(row.answer.split())  # " x" is one token per letter


def test_chat_template(tokenizer) -> None:
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|bos|>User: What is 2 + 2?\nAssistant: 4<|eos|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|>User: What is 2 + 2?\nAssistant:"


# ------------------------------------------------------------------------------------------ task data


def test_task_rows_are_correct_and_disjoint(train_rows, eval_rows, record) -> None:
    spec = record["params"]["task"]
    assert len(train_rows) == spec["n_train"] and len(eval_rows) == spec["n_eval"]
    assert not {r.prompt for r in train_rows} & {r.prompt for r in eval_rows}
    assert len({r.prompt for r in train_rows}) == len(train_rows)
    for row in train_rows + eval_rows:
        op, *letters = row.prompt.split(" ")
        assert spec["min_len"] <= len(letters) <= spec["max_len"]
        assert row.answer.split(" ") == ma.OPS[op](letters)


def test_task_data_and_tokenizer_regenerate_identically(tmp_path: Path, record: dict) -> None:
    spec = ma.TaskSpec(**{**record["params"]["task"], "ops": tuple(record["params"]["task"]["ops"])})
    train, evals = ma.make_rows(spec, record["seed"])
    ma._write_jsonl(tmp_path / "train.jsonl", train)
    ma._write_jsonl(tmp_path / "eval.jsonl", evals)
    assert _sha256(tmp_path / "train.jsonl") == record["files"]["task/train.jsonl"]
    assert _sha256(tmp_path / "eval.jsonl") == record["files"]["task/eval.jsonl"]
    ma.build_tokenizer(train).save_pretrained(tmp_path / "tok")
    assert _sha256(tmp_path / "tok" / "tokenizer.json") == record["files"]["tokenizer/tokenizer.json"]


def test_initial_student_regenerates_identically(tokenizer, tmp_path: Path, record: dict) -> None:
    student = ma.new_model(ma.STUDENT, tokenizer, record["seed"] + 2)
    student.save_pretrained(tmp_path / "student")
    assert _sha256(tmp_path / "student" / "model.safetensors") == record["files"]["student/model.safetensors"]


def test_encode_example_layout(tokenizer, train_rows) -> None:
    longest = 0
    for row in train_rows:
        prompt_ids, completion_ids = encode_example(tokenizer, row)
        assert prompt_ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in prompt_ids
        assert completion_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(prompt_ids + completion_ids, skip_special_tokens=True) == "".join(format_example(row))
        longest = max(longest, len(prompt_ids) + len(completion_ids))
    assert longest <= 32


def test_load_rows_rejects_malformed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "reverse a b", "answer": "b a"}\n\n{"prompt": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=":3:"):
        load_rows(bad)
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":1: not JSON"):
        load_rows(bad)


@pytest.mark.parametrize(
    ("output", "target", "expected"),
    [
        ("c b a", "c b a", True),
        ("  c b a \n", "c b a", True),
        ("c b a", " c b a ", True),
        ("c b", "c b a", False),
        ("c b a a", "c b a", False),
        ("cba", "c b a", False),
        ("c  b a", "c b a", False),
        ("C B A", "c b a", False),
        ("", "c b a", False),
        ("", "", True),
    ],
)
def test_answer_is_correct(output: str, target: str, expected: bool) -> None:
    assert answer_is_correct(output, target) is expected


# ------------------------------------------------------------------------------------------ models


def test_teacher_scores_as_recorded(teacher, tokenizer, eval_rows, record) -> None:
    result = exact_match_accuracy(teacher, tokenizer, eval_rows[:64])
    assert isinstance(result, EvalResult) and result.n == 64 and len(result.samples) == 64
    subset = record["teacher_eval_subset_exact_match"]
    assert subset["n"] == 64
    assert result.accuracy >= subset["accuracy"] - 0.02
    assert result.accuracy >= record["teacher_eval_exact_match"] - 0.1
    # a verifier can recompute the score from the samples alone
    recomputed = sum(answer_is_correct(s["output"], s["target"]) for s in result.samples) / result.n
    assert recomputed == result.accuracy
    assert [s["prompt"] for s in result.samples] == [r.prompt for r in eval_rows[:64]]


def test_left_padded_batches_match_single_rows(teacher, tokenizer, eval_rows) -> None:
    rows = eval_rows[:12]  # mixed lengths, so batches are padded
    batched = exact_match_accuracy(teacher, tokenizer, rows, batch_size=12)
    single = exact_match_accuracy(teacher, tokenizer, rows, batch_size=1)
    assert [s["output"] for s in batched.samples] == [s["output"] for s in single.samples]


def test_initial_student_scores_near_zero(tokenizer, eval_rows) -> None:
    student = transformers.LlamaForCausalLM.from_pretrained(TINY_DIR / "student")
    result = exact_match_accuracy(student, tokenizer, eval_rows[:64])
    assert result.accuracy <= 0.05
