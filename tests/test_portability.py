"""The stored lesson outputs hold on any machine: what nbval compares, and what it may not."""

import json
import re
import tempfile
from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
UNCOMPARED = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")


def _sanitize(text: str) -> str:
    """Apply the sanitize file exactly as nbval does (its own parser, re.sub in file order)."""
    for regex, replace in get_sanitize_patterns(SANITIZE.read_text(encoding="utf-8")):
        text = re.sub(regex, replace, text)
    return text


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _compared(cell: dict) -> bool:
    tags = set(cell.get("metadata", {}).get("tags", []))
    return not any(m in _source(cell) for m in UNCOMPARED) and not tags & {
        "nbval-ignore-output",
        "nbval-skip",
    }


def _texts(cell: dict) -> list[str]:
    texts = []
    for out in cell["outputs"]:
        text = out.get("text") or out.get("data", {}).get("text/plain") or ""
        texts.append("".join(text) if isinstance(text, list) else text)
    return texts


def test_nbval_reads_every_rule_of_the_sanitize_file():
    # nbval silently ignores a malformed pair: every `regex:` line must pair with a `replace:`.
    text = SANITIZE.read_text(encoding="utf-8")
    assert len(get_sanitize_patterns(text)) == len(re.findall(r"^regex: ", text, re.M)) >= 5


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            "train: 100%|##| 400/400 [00:14<00:00, 28.34it/s, loss=0.003, lr=0.00e+00, val_loss=0.002]",
            "train: 100%|##| 400/400 [01:02<00:00, 6.41it/s, loss=0.004, lr=0.00e+00, val_loss=0.001]",
        ),
        ("400 steps in 14.0 s", "400 steps in 37.6 s"),
        ("History(steps=30, loss=5.7420)", "History(steps=30, loss=5.7419)"),
        ("exact    ≈100.0%  ≈99.2%", "exact     ≈99.0% ≈100.0%"),
        ("largest difference ≈2.4e-06", "largest difference ≈3.8e-06"),
        ("greedy      ≈80 of 200, ≈2,639 words", "greedy     ≈101 of 200, ≈2,601 words"),
    ],
)
def test_what_varies_between_machines_is_hidden_from_the_comparison(one, other):
    assert one != other and _sanitize(one) == _sanitize(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            "train: 50%|#| 30/60 [00:01<00:01, 21.3it/s, lr=1.71e-03]",
            "train: 50%|#| 31/60 [00:01<00:01, 21.3it/s, lr=1.71e-03]",
        ),
        (
            "train: 50%|#| 30/60 [00:01<00:01, 21.3it/s, lr=1.71e-03]",
            "train: 50%|#| 30/60 [00:01<00:01, 9.9it/s, lr=1.72e-03]",
        ),
        ("exact match at least 99%: True", "exact match at least 99%: False"),
        ("exact match 99.7%", "exact match 99.8%"),
        ("logits (64, 13, 30)", "logits (64, 13, 31)"),
        ("mistakes: ≈3 of 1000", "mistakes: ≈3 of 1001"),
    ],
)
def test_what_every_machine_reproduces_is_still_compared(one, other):
    # Steps, learning rates (a schedule, not a measurement), verdicts, shapes and numbers not
    # marked as measured must still differ after sanitizing.
    assert _sanitize(one) != _sanitize(other)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_stored_outputs_show_what_a_run_prints(path):
    # The sanitize rules apply at comparison time only: a learner reads real times and bars.
    placeholders = ("[time]", "[elapsed<remaining", "≈…", "0x…", "loss=…")
    for index, cell in enumerate(_code_cells(path)):
        for text in _texts(cell):
            found = [p for p in placeholders if p in text]
            assert not found, f"{path.name} code cell {index} stores the placeholder {found[0]}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_stored_outputs_hold_no_path_of_the_machine_that_ran_them(path):
    # The folders of whichever machine runs this: the checkout, the home and the temporary folder.
    folders = {str(ROOT), str(Path.home()), str(Path(tempfile.gettempdir()).resolve())}
    folders = {folder for folder in folders if Path(folder).parent != Path(folder)}  # not "/"
    machine_paths = re.compile("|".join(re.escape(folder) for folder in sorted(folders)))
    for index, cell in enumerate(_code_cells(path)):
        for text in _texts(cell):
            match = machine_paths.search(text)
            assert not match, f"{path.name} code cell {index} prints a local path: {match[0]}"


def test_nbval_compares_at_least_90_percent_of_the_course_and_85_in_each_lesson():
    total = compared = 0
    for path in LESSONS:
        cells = [c for c in _code_cells(path) if _source(c).strip()]
        kept = sum(_compared(c) for c in cells)
        assert kept / len(cells) >= 0.85, f"{path.name}: only {kept} of {len(cells)} compared"
        total, compared = total + len(cells), compared + kept
    assert compared / total >= 0.90, f"{compared} of {total} code cells compared"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_measured_number_is_followed_by_a_checked_band(path):
    # A cell that prints numbers marked ≈ hides them from nbval; the same cell or the next
    # code cell must assert the range every machine reaches (and that cell is compared).
    cells = _code_cells(path)
    for index, cell in enumerate(cells):
        if not any("≈" in text for text in _texts(cell)):
            continue
        checks = [c for c in cells[index : index + 2] if "assert " in _source(c) and _compared(c)]
        assert checks, f"{path.name} code cell {index} prints ≈ numbers that nothing checks"


def test_make_test_compares_the_lessons_under_a_second_set_of_cpu_kernels():
    makefile = (ROOT / "Makefile").read_text()
    test_line = re.search(r"^test: (.*)$", makefile, re.M).group(1).split()
    assert "nbval" in test_line and "nbval-other-cpu" in test_line
    other = re.search(r"^OTHER_CPU := (.*)$", makefile, re.M).group(1)
    assert "ATEN_CPU_CAPABILITY=default" in other
    assert re.search(r"^nbval-other-cpu: .*\n\t\$\(OTHER_CPU\) \$\(NBVAL\)$", makefile, re.M)


def test_lessons_run_on_the_cpu_under_test_and_the_lab_is_left_alone():
    makefile = (ROOT / "Makefile").read_text()
    line = re.search(r"^(.*): export TFX_COURSE_DEVICE := cpu$", makefile, re.M)
    assert line and {"nbval", "nbval-other-cpu", "grade", "notebooks"} <= set(line[1].split())
    assert "lab" not in line[1].split()


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_the_prose_does_not_quote_a_measured_number(path):
    # A number printed with ≈ differs on another CPU, so the text must quote its checked range,
    # not its digits. (Round values such as 100.0% or 0.0% are not telling and are skipped.)
    cells = json.loads(path.read_text())["cells"]
    measured = set()
    for cell in cells:
        if cell["cell_type"] == "code":
            for text in _texts(cell):
                measured |= set(re.findall(r"≈ ?([-+]?\d[\d,]*\.\d+(?:e[-+]?\d+)?%?)", text))
    telling = {m for m in measured if re.search(r"[2-9]", m)}
    prose = " ".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    quoted = sorted(m for m in telling if re.search(rf"(?<![\d.]){re.escape(m)}(?!\w)", prose))
    assert not quoted, f"{path.name}'s text quotes measured numbers: {quoted}"
