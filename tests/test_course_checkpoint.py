"""The course model shipped inside the package loads safely and scores what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tfx_course.pretrained import COURSE_CHECKPOINT, SUBSET_SIZE, load_course_model, score_test2016

REPO = Path(__file__).resolve().parents[1]
# Greedy decoding in float32 can pick another token on another CPU (other SIMD paths change
# the last bits of a logit, and a near-tie flips); over 100 sentences that moves BLEU by a few
# tenths at most, while a broken model or tokenizer moves it by many points.
BLEU_TOLERANCE = 0.5


def _without_version(signature: str) -> str:
    return "|".join(part for part in signature.split("|") if not part.startswith("version:"))


def test_files_are_complete_small_and_load_with_weights_only():
    for name in ("model.pt", "tokenizer.json", "recipe.json", "results.json"):
        assert (COURSE_CHECKPOINT / name).is_file(), name
    assert (COURSE_CHECKPOINT / "model.pt").stat().st_size <= 20 * 2**20
    payload = torch.load(COURSE_CHECKPOINT / "model.pt", weights_only=True)
    assert payload["dtype"] == "float16"
    recipe = json.loads((COURSE_CHECKPOINT / "recipe.json").read_text())
    assert "--preset cpu-course" in recipe["command"] and recipe["machine"] == "2 CPU cores"
    assert recipe["run"]["preset"]["name"] == "cpu-course"


def test_reloaded_model_reproduces_the_recorded_greedy_bleu(data_root):
    results = json.loads((COURSE_CHECKPOINT / "results.json").read_text())
    recorded = results["test2016_subset_greedy"]
    assert recorded["sentences"] == SUBSET_SIZE and results["test2016_greedy"]["sentences"] == 1000
    model, tokenizer = load_course_model()
    again = score_test2016(
        model, tokenizer, limit=SUBSET_SIZE, root=data_root, max_len=results["decode_max_len"]
    )
    assert again["bleu"] == pytest.approx(recorded["bleu"], abs=BLEU_TOLERANCE)
    assert again["bleu_lowercase"] == pytest.approx(recorded["bleu_lowercase"], abs=BLEU_TOLERANCE)
    assert _without_version(again["signature"]) == _without_version(recorded["signature"])
