"""Scores recomputed from per-sample records (distill_kit/evaluation/rescore.py), task by task: a record that claims
what its response does not support is named, and the score is the benchmark's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill_kit.evaluation.data import FIXTURES_DIR
from distill_kit.evaluation.rescore import Evidence, rescore


@pytest.fixture(scope="module")
def gsm8k_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from distill_kit.evaluation.lm_eval_tasks import build_task_folder, load_config

    folder = tmp_path_factory.mktemp("tasks")
    build_task_folder(folder, {"gsm8k": FIXTURES_DIR / "gsm8k"})
    return load_config((folder / "dk_gsm8k.yaml").read_text())


def test_gsm8k_through_lm_eval_filters_and_exact_match(gsm8k_config: dict) -> None:
    target = "3 * 4 = 12.\n12 + 2 = 14.\n#### 14"
    records = [
        {"doc_id": 0, "response": " 12 + 2 = 14.\n#### 14", "target": target, "extracted": "14", "correct": True,
         "extracted_flexible": "14", "correct_flexible": True},
        {"doc_id": 1, "response": " it is 15", "target": target, "extracted": "[invalid]", "correct": True,
         "extracted_flexible": "15", "correct_flexible": False},
    ]
    rescored = rescore("gsm8k", records, Evidence(config=gsm8k_config))
    assert rescored.score == 0.5 and rescored.n == 2
    assert rescored.disagreements == ["1"]  # claimed correct without a '#### ' answer


def test_mmlu_argmax_and_ifeval_instruction_lists() -> None:
    mmlu = [{"doc_id": 0, "subtask": "dk_mmlu_anatomy", "loglikelihoods": [-3.0, -1.0, -2.0, -4.0], "answer": 1,
             "predicted": 1, "correct": True},
            {"doc_id": 1, "subtask": "dk_mmlu_anatomy", "loglikelihoods": [-1.0, -3.0, -2.0, -4.0], "answer": 2,
             "predicted": 2, "correct": True}]
    rescored = rescore("mmlu", mmlu)
    assert rescored.score == 0.5 and rescored.disagreements == ["1"]
    ifeval = [{"doc_id": 7, "follow_instruction_list": [True, False], "follow_instruction_list_loose": [True, True],
               "correct": True, "correct_loose": True}]
    rescored = rescore("ifeval", ifeval)
    assert rescored.score == 0.0 and rescored.disagreements == ["7"]
    assert "not re-run" in rescored.method


def test_mt_bench_101_min_per_dialogue_from_the_judgements() -> None:
    records = [{"task": "CM", "dialogue_id": 1, "turn": 1, "judgement": "Rating: [[8]]", "score": 8},
               {"task": "CM", "dialogue_id": 1, "turn": 2, "judgement": "Rating: [[4]]", "score": 4},
               {"task": "SI", "dialogue_id": 2, "turn": 1, "judgement": "Rating: [[6]]", "score": 9}]
    rescored = rescore("mt_bench_101", records)
    assert rescored.score == (4 + 6) / 2  # the forged 9 is re-read from the judge's text as 6
    assert rescored.disagreements == ["#2"]


def test_alpaca_eval_lc_win_rate_refit_through_alpaca_eval() -> None:
    from distill_kit.evaluation.alpaca_eval2 import _import_alpaca_eval

    _import_alpaca_eval()
    root = FIXTURES_DIR / "alpaca_eval"
    reference = json.loads((root / "alpaca_eval_gpt4_baseline.json").read_text())
    records = [{"index": i, "instruction": r["instruction"], "output": r["output"][: 20 + 15 * i],
                "reference_output": r["output"], "preference": 1.0 + (i % 2), "glm_preference": 0.0}
               for i, r in enumerate(reference)]
    for record in records:  # a cut that keeps the whole reference is a copy: alpaca_eval's tie
        record["preference"] = 1.5 if record["output"] == record["reference_output"] else record["preference"]
    gamed = (root / "df_gamed.csv").read_bytes()
    first = rescore("alpaca_eval", records, Evidence(gamed_csv=gamed))
    assert len(first.disagreements) == len(records)  # the stored GLM preferences (0.0) are not the re-fit ones
    for record, value in zip(records, _glm(records, gamed), strict=True):
        record["glm_preference"] = value
    honest = rescore("alpaca_eval", records, Evidence(gamed_csv=gamed))
    assert honest.disagreements == [] and honest.score == pytest.approx(first.score)
    records[0]["preference"] = 2.0  # one judge's verdict changed: the re-fit no longer matches what is stored
    changed = rescore("alpaca_eval", records, Evidence(gamed_csv=gamed))
    assert changed.score != pytest.approx(honest.score) and changed.disagreements
    fallback = rescore("alpaca_eval", records)
    assert "not re-fit" in fallback.method


def _glm(records: list[dict], gamed: bytes) -> list[float]:
    import pandas as pd

    from distill_kit.evaluation.alpaca_eval2 import ANNOTATOR, BASELINE, _lc_winrate

    frame = pd.DataFrame({"instruction": [r["instruction"] for r in records],
                          "output_1": [r["reference_output"] for r in records],
                          "output_2": [r["output"] for r in records], "generator_1": BASELINE,
                          "generator_2": "model", "annotator": ANNOTATOR,
                          "preference": [r["preference"] for r in records], "judge_reply": "",
                          "preference_from": "", "is_switched_outputs": False})
    path = Path(__import__("tempfile").mkdtemp()) / "df_gamed.csv"
    path.write_bytes(gamed)
    _lc_winrate(frame, path)
    return [float(g) for g in frame["glm_preference"]]


def test_alpaca_eval_an_output_identical_to_the_reference_is_a_tie_whatever_the_record_says() -> None:
    """alpaca_eval scores an output identical to the reference 1.5 without asking the judge: a record claiming the
    model won such a pair is re-read as a tie and named."""
    from distill_kit.evaluation.alpaca_eval2 import _import_alpaca_eval

    _import_alpaca_eval()
    root = FIXTURES_DIR / "alpaca_eval"
    reference = json.loads((root / "alpaca_eval_gpt4_baseline.json").read_text())
    records = [{"index": i, "instruction": r["instruction"], "output": r["output"] if i < 2 else r["output"][:30],
                "reference_output": r["output"], "preference": 1.5 if i < 2 else 1.0 + (i % 2),
                "glm_preference": 0.0} for i, r in enumerate(reference)]
    gamed = (root / "df_gamed.csv").read_bytes()
    for record, value in zip(records, _glm(records, gamed), strict=True):
        record["glm_preference"] = value
    honest = rescore("alpaca_eval", records, Evidence(gamed_csv=gamed))
    assert honest.disagreements == []
    forged = [dict(r) for r in records]
    forged[0]["preference"] = 2.0  # the copied reference "wins"
    for record, value in zip(forged, _glm(forged, gamed), strict=True):
        record["glm_preference"] = value
    rescored = rescore("alpaca_eval", forged, Evidence(gamed_csv=gamed))
    assert rescored.score == pytest.approx(honest.score)
    assert "0" in rescored.disagreements
