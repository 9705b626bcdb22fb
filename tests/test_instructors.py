"""The instructors' material that tools generate: the timetable's stated times, the workshop
plans and the per-lesson notes (timing and the mistakes the checks name)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import nbformat
import pytest

from tfx_course.grading.exercises import LESSONS

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "instructors.md"
CPU = json.loads((ROOT / "results" / "lesson_times_cpu.json").read_text())


@pytest.fixture(scope="module")
def time_lessons(load_script):
    return load_script("tools/time_lessons.py")


@pytest.fixture(scope="module")
def notes(load_script):
    return load_script("tools/instructor_notes.py")


def _first_cell(path: Path) -> str:
    return " ".join(nbformat.read(path, as_version=4).cells[0].source.split())


def test_the_timetable_fills_reading_and_solving_times_from_the_notebooks(time_lessons):
    rows = [line.split(" | ") for line in time_lessons.timetable(CPU).splitlines()[2:]]
    assert len(rows) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    for row in rows:
        nn = row[0].strip("| ")[:2]
        lesson = _first_cell(next((ROOT / "notebooks").glob(f"{nn}_*.ipynb")))
        read = row[-2]
        assert re.search(rf"\b{read.split()[0]} minutes to read", lesson), (nn, read)
        exercises = list((ROOT / "exercises").glob(f"{nn}_*.ipynb"))
        solve = row[-1].strip(" |")
        if not exercises:
            assert solve == "—"
            continue
        low, _, high = solve.removesuffix(" min").partition("–")
        stated = f"{low} to {high} minutes to solve" if high else f"{low} minutes to solve"
        assert stated in _first_cell(exercises[0]), (nn, solve)
    assert "not stated" not in time_lessons.timetable(CPU)


def test_the_guide_shows_the_plans_the_tool_makes(time_lessons):
    plans = time_lessons.workshop_plans(CPU)
    assert plans in GUIDE.read_text()
    assert "**Three days**" in plans and "**One day**" in plans


def _rows(plan: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in plan.splitlines()[2:]]


def test_three_days_hold_every_lesson_and_every_exercise_with_breaks(time_lessons):
    rows = _rows(time_lessons.plan(CPU, time_lessons.THREE_DAYS))
    sessions = [r[2] for r in rows if r[2][:2].isdigit()]
    assert [s[:2] for s in sessions] == [f"{n:02d}" for n in range(11)]
    for session in sessions:
        assert ("exercises" in session) == (session[:2] in LESSONS), session
    for day in ("1", "2", "3"):
        day_rows = [r for r in rows if r[0] == day]
        assert "lunch" in [r[2] for r in day_rows]
        start, minutes = day_rows[-1][1], int(day_rows[-1][3])
        hours, mins = map(int, start.split(":"))
        assert hours * 60 + mins + minutes <= 17 * 60 + 30, f"day {day} runs past 17:30"
        work = 0  # no more than two lesson sessions without a break or lunch
        for r in day_rows:
            work = 0 if r[2] in ("break", "lunch") else work + 1
            assert work <= 2, f"day {day}: no break before {r[2]}"


def test_one_day_keeps_the_attention_path_and_cuts_the_rest(time_lessons):
    rows = _rows(time_lessons.plan(CPU, time_lessons.ONE_DAY))
    sessions = {r[2][:2]: r[2] for r in rows if r[2][:2].isdigit()}
    assert sorted(sessions) == ["01", "02", "03", "05", "07"]
    assert [n for n, s in sessions.items() if "exercises" in s] == ["01", "02", "05"]
    guide = GUIDE.read_text()
    for cut in ("lesson 04", "lesson 06", "Part II", "lesson 00"):
        assert cut in guide.split("**What the one day cuts.**")[1], cut


def test_a_plan_that_runs_past_the_day_is_refused(time_lessons):
    everything = [[(f"{n:02d}", "both") for n in range(11)]]
    with pytest.raises(ValueError, match="after 17:30"):
        time_lessons.plan(CPU, everything)


def test_the_session_minutes_add_the_stated_and_measured_times(time_lessons):
    minutes, what = time_lessons.session_minutes(CPU, "07", "both")
    seconds = next(r["seconds"] for r in CPU["notebooks"] if r["notebook"].startswith("07_") and r["kind"] == "lesson")  # fmt: skip
    run = -(-seconds // 60)  # rounded up
    assert what == f"07 the full Transformer (read 45, run {run:.0f}, exercises 40)"
    assert minutes == 10 + 45 + run + 40


# --- per-lesson notes ------------------------------------------------------------------------


def test_the_notes_generated_parts_are_current(notes):
    text = notes.NOTES.read_text()
    assert notes.render(text, CPU) == text, "run python tools/instructor_notes.py"
    for nn in [f"{n:02d}" for n in range(11)]:
        assert f"<!-- generated: timing {nn} -->" in text
        assert f"<!-- generated: mistakes {nn} -->" in text
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) == 11
    for section in sections:
        assert "**Key points**" in section and "**Discussion**" in section
        assert re.search(r"^1\. .*^2\. ", section, re.S | re.M), section[:40]


def test_the_notes_name_the_mistakes_the_tests_plant(notes):
    """Each planted bug's expected message (tests/test_checks_*.py) is in the notes' list,
    unless it comes from the failures every check shares (tfx_course/checks/core.py)."""
    core = (ROOT / "tfx_course" / "checks" / "core.py").read_text()
    found = missed = 0
    for path in sorted((ROOT / "tests").glob("test_checks_*.py")):
        if path.stem == "test_checks_core":
            continue
        for exercise, pairs in importlib.import_module(path.stem).BUGS.items():
            listed = notes.mistakes(exercise)
            assert len(listed) >= 3, exercise
            for _, fragment in pairs:
                # a number in the fragment may be an f-string's filled-in part, "…" in the notes
                loose = re.compile(r"\S*?".join(map(re.escape, re.split(r"\d+", fragment))))
                if any(fragment in m or loose.search(m) for m in listed):
                    found += 1
                elif fragment not in core:
                    missed += 1
    assert found >= 150 and missed <= 0.05 * found, (found, missed)


def test_the_mistake_reader_sees_literal_fstring_and_table_messages(notes):
    assert "missing scaling: divide q k^T by math.sqrt(d_k)" in notes.mistakes("attention_scores")
    decoder = notes.mistakes("decoder_layer")  # a {bug name: message} table
    assert "the residual around cross-attention is missing" in decoder
    assert "no_cross_residual" not in decoder
    causal = notes.mistakes("causal_mask")  # an f-string: "…" for the filled-in part
    assert "causal_mask(…) is wrong: row t should be True at columns 0..t only" in causal
    residual = notes.mistakes("pre_ln_residual")  # "text " + (a if pre else b)
    assert "the residual is added twice: add the input x once, …" in residual
