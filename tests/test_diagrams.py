"""The architecture diagrams: `tools/diagrams.py` redraws exactly the committed figures."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "notebooks" / "figures"
EXPECTED = {
    "transformer.svg",
    "attention.svg",
    "pre_post_ln.svg",
    "kv_cache.svg",
    "lstm_seq2seq.svg",
}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, load_script) -> Path:
    out = tmp_path_factory.mktemp("figures")
    load_script("tools/diagrams.py").write_figures(out)
    return out


def test_the_script_draws_every_figure_and_only_those(drawn):
    assert {p.name for p in drawn.iterdir()} == EXPECTED
    assert {p.name for p in FIGURES.iterdir()} == EXPECTED, "stray or missing files in figures/"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_committed_figure_is_what_the_script_draws(drawn, name):
    fresh, committed = (drawn / name).read_bytes(), (FIGURES / name).read_bytes()
    assert fresh == committed, (
        f"notebooks/figures/{name} differs from what tools/diagrams.py draws: run "
        "`python tools/diagrams.py` (or `make notebooks`) and commit the result"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_figure_fits_a_lesson_and_needs_no_fonts(drawn, name):
    svg = ET.parse(drawn / name).getroot()
    # matplotlib writes sizes in points; a browser shows 4/3 CSS pixels per point.
    width, height = (float(re.fullmatch(r"([\d.]+)pt", svg.get(k))[1]) * 4 / 3 for k in ("width", "height"))  # fmt: skip
    assert 700 <= width <= 900, f"{name} is {width:.0f} px wide; a lesson's cell shows 700-900"
    assert 400 <= height <= 900, f"{name} is {height:.0f} px high"
    text = (drawn / name).read_text()
    assert "<text" not in text and "font-family" not in text, f"{name}: text must be paths"
    assert "<dc:date>" not in text, f"{name}: a date in the file would change on every run"
