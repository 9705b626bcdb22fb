"""What every check shares: it never crashes on learner code, and it reports its verdict."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from tfx_course import checks
from tfx_course.checks import core
from tfx_course.checks.core import RAISE_ENV, RESULTS_ENV, TIMEOUT_ENV


def _raises(*args, **kwargs):
    raise ValueError("boom")


def _hangs(*args, **kwargs):
    while True:
        pass


def _not_done(*args, **kwargs):
    raise NotImplementedError("exercise 'x': write your code here")


def _exits(*args, **kwargs):
    sys.exit(3)


def _nan_scores(q, k):
    return torch.full(q.shape[:-1] + (k.shape[-2],), float("nan"))


ALL_CHECKS = [getattr(checks, name) for name in checks.__all__ if name.startswith("check_")]


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("fn", "fragment"),
    [
        (_raises, "raised ValueError: boom"),
        (_not_done, "not attempted yet"),
        (_exits, "raised SystemExit"),
        (lambda *a, **k: None, "NoneType"),
        (lambda *a, **k: "text", "str"),
        (42, "expected a function or class, got int"),
    ],
    ids=["raises", "not-attempted", "exits", "none", "str", "not-callable"],
)
def test_broken_learner_code_fails_without_crashing(check, fn, fragment, capsys):
    result = check(fn)
    assert not result.passed
    assert fragment in result.message
    assert capsys.readouterr().out == f"FAIL [{result.name}] {result.message}\n"


def test_a_hang_is_a_failure_after_the_time_limit():
    result = checks.check_causal_mask(_hangs, timeout=0.2)
    assert not result.passed
    assert "did not return within 0.2 s" in result.message


def test_the_time_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "0.1")
    result = checks.check_split_heads(_hangs)
    assert "did not return within 0.1 s" in result.message


def test_nan_is_a_failure():
    result = checks.check_attention_scores(_nan_scores)
    assert not result.passed and "NaN" in result.message


def test_verdicts_go_to_the_results_file(tmp_path, monkeypatch):
    log = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(log))
    checks.check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril())
    checks.check_causal_mask(_raises)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["name"], r["passed"]) for r in lines] == [
        ("causal_mask", True),
        ("causal_mask", False),
    ]
    assert "boom" in lines[1]["message"]


def test_raise_on_fail_mode_raises_for_nbgrader(monkeypatch):
    monkeypatch.setenv(RAISE_ENV, "1")
    with pytest.raises(checks.CheckFailed, match=r"FAIL \[causal_mask\]"):
        checks.check_causal_mask(_raises)
    assert checks.check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril()).passed


def test_a_check_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_multi_head_attention(lambda d, h: torch.nn.Linear(d, d))  # consumes randomness
    checks.check_attention(_raises)
    assert torch.equal(torch.rand(3), expected)


def test_result_is_truthy_only_when_passed():
    good = checks.check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril())
    bad = checks.check_causal_mask(_raises)
    assert bool(good) and not bool(bad)
    assert str(good).startswith("PASS [causal_mask] ")


def test_hanging_and_raising_answers_fail_without_crashing():
    def hang(*args, **kwargs):
        while True:
            pass

    assert "did not return within 0.5 s" in checks.check_adamw_step(hang, timeout=0.5).message
    assert "raised ZeroDivisionError" in checks.check_cosine_lr(lambda *a: 1 / 0).message


def test_not_attempted_hanging_and_raising_answers_fail_without_crashing():
    def todo(*args):
        raise NotImplementedError("exercise 'beam_step': write your code here")

    def hang(*args):
        while True:
            pass

    assert checks.check_beam_step(todo).message.startswith("not attempted yet")
    assert "did not return within 0.5 s" in checks.check_ngram_matches(hang, timeout=0.5).message
    assert "raised KeyError" in checks.check_pair_counts(lambda c: {}["x"]).message


def test_every_exercise_has_three_named_bugs_and_an_alternative():
    # Each test_checks_<topic>.py plants bugs (BUGS) and other correct answers (ALTERNATIVES).
    from tfx_course.grading.exercises import LESSONS

    bugs, alternatives = {}, {}
    for path in sorted(Path(__file__).parent.glob("test_checks_*.py")):
        if path.stem != "test_checks_core":
            module = importlib.import_module(path.stem)
            bugs |= module.BUGS
            alternatives |= module.ALTERNATIVES
    exercises = [name for names in LESSONS.values() for name in names]
    assert sorted(bugs) == sorted(exercises) == sorted(alternatives)
    for name in exercises:
        assert len(bugs[name]) >= 3 and len(alternatives[name]) >= 1, name


# --- the time limit without SIGALRM (Windows has none) -------------------------------------


@pytest.fixture
def no_alarm(monkeypatch):
    """Make the checks run as on Windows: the signal module has no SIGALRM."""
    monkeypatch.setattr(core, "signal", types.SimpleNamespace(), raising=True)
    assert not core._alarm_available()


def _correct_causal_mask(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def _planted(kind: str) -> list:
    cases = []
    for path in sorted(Path(__file__).parent.glob("test_checks_*.py")):
        if path.stem == "test_checks_core":
            continue
        module = importlib.import_module(path.stem)
        for name, entries in getattr(module, kind).items():
            cases += [(name, entry) for entry in entries]
    return cases


def test_without_sigalrm_a_correct_answer_passes_and_a_hang_fails(no_alarm, capsys):
    assert checks.check_causal_mask(_correct_causal_mask).passed
    result = checks.check_causal_mask(_hangs, timeout=0.3)
    assert not result.passed
    assert result.message == "causal_mask(5) did not return within 0.3 s (an endless loop?)"
    assert capsys.readouterr().out.endswith(f"FAIL [causal_mask] {result.message}\n")
    # The hanging worker was stopped, not left spinning.
    stuck = [t for t in threading.enumerate() if t.name == "tfx-course-check" and t.is_alive()]
    assert not stuck


@pytest.mark.parametrize(
    ("fn", "fragment"),
    [
        (_raises, "raised ValueError: boom"),
        (_not_done, "not attempted yet"),
        (_exits, "raised SystemExit"),
        (lambda *a, **k: None, "NoneType"),
        (_nan_scores, "NaN"),
        (42, "expected a function or class, got int"),
    ],
    ids=["raises", "not-attempted", "exits", "none", "nan", "not-callable"],
)
def test_without_sigalrm_broken_code_is_reported_as_with_it(no_alarm, fn, fragment):
    result = checks.check_attention_scores(fn)
    assert not result.passed and fragment in result.message


ALTERNATIVE_CASES, BUG_CASES = _planted("ALTERNATIVES"), _planted("BUGS")


@pytest.mark.parametrize(("name", "fn"), ALTERNATIVE_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALTERNATIVE_CASES)])  # fmt: skip
def test_without_sigalrm_every_correct_alternative_passes(no_alarm, name, fn):
    result = getattr(checks, f"check_{name}")(fn)
    assert result.passed, result.message


@pytest.mark.parametrize(("name", "bug"), BUG_CASES, ids=[f"{n}-{b[1]}" for n, b in BUG_CASES])  # fmt: skip
def test_without_sigalrm_every_planted_bug_is_named(no_alarm, name, bug):
    fn, fragment = bug
    result = getattr(checks, f"check_{name}")(fn)
    assert not result.passed and fragment in result.message


def test_the_worker_thread_keeps_the_callers_grad_mode(no_alarm):
    with torch.no_grad():
        assert core.call("f()", torch.is_grad_enabled) is False
    assert core.call("f()", torch.is_grad_enabled) is True
    with torch.inference_mode():
        assert core.call("f()", torch.is_inference_mode_enabled) is True


def test_outside_the_main_thread_a_hang_is_still_stopped():
    results = []
    worker = threading.Thread(target=lambda: results.append(checks.check_causal_mask(_hangs, timeout=0.2)))  # fmt: skip
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert "did not return within 0.2 s" in results[0].message
