"""Pre-serialised /score answers and the warm-up timing policy (pure functions, no server)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest


def test_answer_is_its_json_and_reads_like_the_dict():
    from serving.online import Answer

    d = {"account_id": "a1", "score": np.int64(40), "probability": np.float32(0.25),
         "raw_score": float("nan"), "base_value": float("inf"), "hot": np.bool_(True),
         "reasons_up": [{"text": "3 users invited teammates — café", "contribution": np.float64(0.5)}],
         "_private": "left out"}
    a = Answer.of(d)
    expected = {"account_id": "a1", "score": 40, "probability": 0.25, "raw_score": None,
                "base_value": None, "hot": True,
                "reasons_up": [{"text": "3 users invited teammates — café", "contribution": 0.5}]}
    assert json.loads(a.json) == expected
    assert "café".encode() in a.json and b'": ' not in a.json and b'", ' not in a.json  # compact UTF-8
    assert a["score"] == 40 and dict(a) == expected and a == expected and expected == a
    assert a != {**expected, "score": 41}
    assert Answer.of(a) is a
    # Across a process boundary only the bytes travel; the copy is equal.
    b = pickle.loads(pickle.dumps(a))
    assert b.json == a.json and b == a and b._data is None


def test_answers_json_is_the_array_of_the_answers():
    from serving.online import Answer, answers_json

    items = [Answer.of({"account_id": "a", "score": 1}), {"account_id": "b", "error": "no events"}]
    assert json.loads(answers_json(items)) == [{"account_id": "a", "score": 1},
                                               {"account_id": "b", "error": "no events"}]
    assert answers_json([]) == b"[]"


def test_score_output_spec_sends_the_concatenated_bytes():
    from serving.online import Answer
    from serving.service import ScoreAnswers

    answers = [Answer.of({"account_id": "a", "score": 1}), Answer.of({"account_id": "b", "score": 2})]
    model = ScoreAnswers(answers)
    assert model.model_dump() == b'[{"account_id":"a","score":1},{"account_id":"b","score":2}]'
    assert ScoreAnswers.mime_type() == "application/json"
    assert ScoreAnswers.model_json_schema()["type"] == "array"


@pytest.mark.parametrize("now, due", [
    ("2024-06-01 10:00:01", ["10:05"]),                 # a window just started
    ("2024-06-01 10:03:29", ["10:05"]),                 # 91 s left: not yet
    ("2024-06-01 10:03:30", ["10:05", "10:10"]),        # 90 s left: the next one is due
    ("2024-06-01 10:04:59.9", ["10:05", "10:10"]),
    ("2024-06-01 10:05:00", ["10:05", "10:10"]),        # on the boundary "now" is still 10:05
    ("2024-06-01 10:05:00.001", ["10:10"]),             # 10:10 is current, 10:15 not yet
])
def test_the_next_cutoff_is_warmed_only_in_the_last_lead_seconds(now, due):
    from serving.service import warm_due

    got = warm_due(pd.Timestamp(now), "5min", 90)
    assert [c.strftime("%H:%M") for c in got] == due
    assert all(c.date() == pd.Timestamp("2024-06-01").date() for c in got)


def test_the_warmer_wakes_when_the_due_cutoffs_change():
    from serving.service import seconds_until_due_changes, warm_due

    for now in pd.date_range("2024-06-01 10:00:00.5", periods=40, freq="17s"):
        wait = seconds_until_due_changes(now, "5min", 90)
        assert wait >= 0
        # Nothing changes before the wake-up; something changes right after it.
        assert warm_due(now + pd.Timedelta(seconds=wait) - pd.Timedelta(milliseconds=1), "5min", 90) \
            == warm_due(now, "5min", 90)
        assert warm_due(now + pd.Timedelta(seconds=wait) + pd.Timedelta(milliseconds=1), "5min", 90) \
            != warm_due(now, "5min", 90)
    # A lead longer than the window: the next cutoff is always due (the previous behaviour).
    assert len(warm_due(pd.Timestamp("2024-06-01 10:00:01"), "1min", 90)) == 2
