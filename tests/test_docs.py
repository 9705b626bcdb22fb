"""The material around the lessons: links, the CLI commands they name, glossary and references."""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from tfx_course.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = [
    *LESSONS,
    *sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb")),
    *sorted((ROOT / "exercises" / "solutions").glob("[0-9][0-9]_*.ipynb")),
]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GLOSSARY = ROOT / "docs" / "glossary.md"
REFERENCES = ROOT / "docs" / "references.md"

CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
FENCED = re.compile(r"```[^\n]*\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
COMMAND = re.compile(r"(?:(?<![\w-])(?<!--name )tfx-course|-m\s+tfx_course\.cli)(?![\w-])(.*)")
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "<"}
# Author-year citations: "Xiong et al. (2020", "Post, 2018", "Sennrich, Haddow and Birch, 2016".
CITATION = re.compile(
    r"\b([A-Z][A-Za-z'-]+)(?: et al\.|(?:, [A-Z][A-Za-z'-]+)*,? (?:and|&) [A-Z][A-Za-z'-]+)?"
    r"(?:, | \()((?:19|20)\d\d)[,;)]"
)


@dataclass(frozen=True)
class Text:
    path: Path
    where: str  # how a failure names the place: "README.md", "notebooks/09_training.ipynb cell 0"
    kind: str  # "markdown" or "code"
    source: str


def _texts() -> list[Text]:
    texts = [Text(p, p.relative_to(ROOT).as_posix(), "markdown", p.read_text()) for p in DOCS]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        name = path.relative_to(ROOT).as_posix()
        for i, cell in enumerate(cells):
            if cell["cell_type"] in ("markdown", "code"):
                source = "".join(cell["source"])
                texts.append(Text(path, f"{name} cell {i}", cell["cell_type"], source))
    return texts


TEXTS = _texts()


# --- links ---------------------------------------------------------------------------------


def _github_slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\$", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """The ids a link may use for the headings of a Markdown file or a notebook."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        markdown = path.read_text()
    headings = HEADING.findall(FENCED.sub("", markdown))
    # GitHub and static sites use slugs; JupyterLab keeps the text with spaces made hyphens.
    return {_github_slug(h) for h in headings} | {re.sub(r"[`*]", "", h).replace(" ", "-") for h in headings}  # fmt: skip


def _link_problem(text: Text, url: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I):  # https:, mailto:, ...
        return None
    target, _, anchor = unquote(url).partition("#")
    path = (text.path.parent / target).resolve() if target else text.path
    if not path.exists():
        return "no such file"
    if anchor and path.suffix in (".md", ".ipynb") and anchor not in _anchors(path):
        return f"no heading #{anchor} in {path.name}"
    return None


def _links(text: Text) -> list[str]:
    prose = CODE.sub("", text.source)
    return LINK.findall(prose) + HTML_LINK.findall(prose)


def test_every_relative_link_in_the_docs_and_notebooks_points_at_something_that_exists():
    problems, checked = [], 0
    for text in TEXTS:
        if text.kind != "markdown":
            continue
        for url in _links(text):
            checked += 1
            problem = _link_problem(text, url)
            if problem:
                problems.append(f"{text.where}: ({url}) {problem}")
    assert checked > 150, f"found only {checked} links: is the link pattern still right?"
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_sees_broken_files_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Second `part`\n")
    text = Text(page, "page.md", "markdown", "")
    assert _link_problem(text, "page.md#second-part") is None
    assert _link_problem(text, "#a-title") is None
    assert _link_problem(text, "https://example.org/missing") is None
    assert _link_problem(text, "missing.md") == "no such file"
    assert "no heading #third" in _link_problem(text, "page.md#third")
    assert _links(Text(page, "", "markdown", "[a](x.md) `[b](y.md)` ![c](z.svg)")) == ["x.md", "z.svg"]  # fmt: skip


# --- CLI commands ------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return found[0] if found else None


def command_problem(words: list[str], parser: argparse.ArgumentParser) -> str | None:
    """Say what is wrong with `tfx-course WORDS...`, or None if its commands and options exist."""
    path = ["tfx-course"]
    for word in words:
        sub = _subcommands(parser)
        if word.startswith("-"):
            option = word.split("=")[0]
            known = {s for a in parser._actions for s in a.option_strings}
            if option not in known:
                return f"`{' '.join(path)}` has no option {option}"
        elif sub is not None:
            if word not in sub.choices:
                return f"`{' '.join(path)} {word}` is not a command (try one of {', '.join(sub.choices)})"  # fmt: skip
            parser = sub.choices[word]
            path.append(word)
    sub = _subcommands(parser)
    if sub is not None and len(path) > 1 and sub.required:
        return f"`{' '.join(path)}` needs one of {', '.join(sub.choices)}"
    return None


def _commands(text: Text) -> list[list[str]]:
    """The words after each `tfx-course` in a code cell, a code span or a fenced block."""
    if text.kind == "code":
        snippets = text.source.splitlines()
    else:
        fenced = [line for block in FENCED.findall(text.source) for line in block.splitlines()]
        snippets = fenced + INLINE.findall(FENCED.sub("", text.source))
    commands = []
    for snippet in snippets:
        for match in COMMAND.finditer(snippet):
            words = []
            for word in match.group(1).split():
                if word.startswith("#") or word in SHELL_STOP:
                    break
                words.append(word.strip("\"'),"))
            commands.append(words)
    return commands


def test_every_tfx_course_command_named_in_the_docs_and_notebooks_exists():
    parser, problems, checked = build_parser(), [], 0
    for text in TEXTS:
        for words in _commands(text):
            checked += 1
            problem = command_problem(words, parser)
            if problem:
                problems.append(f"{text.where}: `tfx-course {' '.join(words)}`: {problem}")
    assert checked > 30, f"found only {checked} commands: is the command pattern still right?"
    assert not problems, "commands that the CLI does not have:\n" + "\n".join(problems)


def test_the_command_check_tells_real_commands_from_wrong_ones():
    parser = build_parser()
    assert command_problem(["data", "download", "--force"], parser) is None
    assert command_problem(["check", "07", "--path", "mine.ipynb"], parser) is None
    assert command_problem(["train", "--preset", "cpu-smoke", "--max-minutes=3"], parser) is None
    assert command_problem([], parser) is None  # the program's name on its own
    assert "`tfx-course download` is not a command" in command_problem(["download"], parser)
    assert "no option --max-minute" in command_problem(["train", "--max-minute", "3"], parser)
    assert "`tfx-course data` needs one of download, status" in command_problem(["data"], parser)
    text = Text(ROOT, "", "markdown", "run `tfx-course data download` (or\n```\ntfx-course doctor  # x\n```")  # fmt: skip
    assert _commands(text) == [["doctor"], ["data", "download"]]


# --- glossary ------------------------------------------------------------------------------------

# Terms every course on the Transformer uses; the glossary must explain each.
CORE_TERMS = """attention; query; key; value; scaled dot-product attention; softmax saturation;
padding mask; causal mask; multi-head attention; head; positional encoding;
sinusoidal positional encoding; learned positions; residual connection; LayerNorm; Pre-LN;
Post-LN; warmup; feed-forward network; encoder; decoder; cross-attention; memory;
teacher forcing; greedy decoding; beam search; length penalty; KV cache; BPE; subword;
vocabulary; label smoothing; AdamW; weight decay; gradient clipping; bf16; mixed precision;
BLEU; sacreBLEU signature; exact match; perplexity; checkpoint; ablation ladder; self-attention;
embedding; tokenizer; logits; DecoderLayer; EncoderLayer"""


def _table_cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def glossary_rows() -> list[list[str]]:
    lines = GLOSSARY.read_text().splitlines()
    rows = [_table_cells(line) for line in lines if line.startswith("| ")]
    assert rows and rows[0][0] == "term", "docs/glossary.md: the table's header row is missing"
    return rows[1:]


def term_forms(term: str) -> list[str]:
    """A glossary term and its alternatives: "BPE (byte-pair encoding)" -> both."""
    term = term.replace("`", "")
    main, _, rest = term.partition(" (")
    return [main, *(f.strip() for f in re.split(r"[,;]", rest.rstrip(")")) if f.strip())]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("_", " "))


def mentions(text: str, form: str) -> bool:
    """Whether each word of ``form`` occurs in ``text``, a word of over 5 letters by its first 5."""
    present = _words(text)
    return all(any(p.startswith(w[:5]) for p in present) for w in _words(form))


def _lesson_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]


def test_glossary_rows_are_complete_and_in_alphabetical_order():
    rows = glossary_rows()
    assert len(rows) >= 100, f"the glossary has only {len(rows)} terms"
    keys = [row[0].replace("`", "").lower() for row in rows]
    assert keys == sorted(keys), "docs/glossary.md: terms are not in alphabetical order"
    assert len(set(keys)) == len(keys), "docs/glossary.md: a term appears twice"
    for term, chinese, meaning, lesson in rows:
        assert re.search(r"[\u4e00-\u9fff]", chinese), f"{term}: no Chinese name"
        assert 20 <= len(meaning) <= 400, f"{term}: the meaning should be one or two sentences"
        link = re.fullmatch(r"\[(\d\d)\]\(\.\./notebooks/(\d\d)_\w+\.ipynb\)", lesson)
        assert link and link[1] == link[2], (
            f"{term}: lesson should be [NN](../notebooks/NN_x.ipynb)"
        )


def test_each_glossary_term_is_used_in_the_lesson_it_links():
    missing = []
    for term, _, _, lesson in glossary_rows():
        path = GLOSSARY.parent / re.search(r"\((.+)\)", lesson)[1]
        cells = _lesson_cells(path)
        if not any(mentions(cell, form) for cell in cells for form in term_forms(term)):
            missing.append(f"{term} (not in {path.name})")
    assert not missing, "glossary terms their lesson never mentions:\n" + "\n".join(missing)


def test_the_glossary_explains_the_core_terms():
    forms = {form.lower() for row in glossary_rows() for form in term_forms(row[0])}
    core = [t.strip() for t in CORE_TERMS.split(";")]
    assert [t for t in core if t.lower() not in forms] == []


def test_the_term_matching_is_strict_enough_to_fail():
    assert term_forms("BPE (byte-pair encoding)") == ["BPE", "byte-pair encoding"]
    assert term_forms("unknown token (`<unk>`)") == ["unknown token", "<unk>"]
    assert mentions("the softmax saturates quickly", "softmax saturation")
    assert mentions("`padding_mask(keep)` blocks pads", "padding mask")
    assert not mentions("the softmax", "softmax saturation")
    assert not mentions("a beam of five", "beam search")
    assert mentions("written atomically, as atomic writes", "atomic write")


# --- references ----------------------------------------------------------------------------------

# Works and libraries the lessons name in prose; if a lesson names one, the references list it.
NAMED = ["Attention Is All You Need", "nbval", "sacreBLEU", "tokenizers", "PyTorch", "NumPy",
         "BERT", "GPT-2", "RoPE", "bentrevett/pytorch-seq2seq", "JupyterLab", "Hugging Face"]  # fmt: skip


def reference_rows() -> list[list[str]]:
    lines = REFERENCES.read_text().splitlines()
    rows = [_table_cells(line) for line in lines if line.startswith("| ")]
    return [row for row in rows if row[0] not in ("work", "library")]


def _prose() -> list[Text]:
    return [t for t in TEXTS if t.kind == "markdown" and t.path != REFERENCES]


def test_every_citation_is_in_the_references():
    rows, missing, found = reference_rows(), [], 0
    for text in _prose():
        for surname, year in CITATION.findall(text.source):
            found += 1
            if not any(surname in row[0] and row[1] == year for row in rows):
                missing.append(f"{text.where}: {surname} ({year})")
    assert found >= 10, f"found only {found} citations: is the citation pattern still right?"
    assert not missing, "cited but not in docs/references.md:\n" + "\n".join(missing)


def test_every_library_the_notebooks_import_or_name_is_in_the_references():
    references = REFERENCES.read_text()
    modules = set()
    for text in TEXTS:
        if text.kind == "code" and text.path.suffix == ".ipynb":
            code = "\n".join(line for line in text.source.splitlines() if line[:1] not in "%!")
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    third_party = sorted(modules - set(sys.stdlib_module_names) - {"tfx_course"})
    assert {"torch", "numpy", "matplotlib"} <= set(third_party)
    assert [m for m in third_party if f"`{m}`" not in references] == []
    lessons = "\n".join(t.source for t in _prose() if t.path in LESSONS)
    assert [n for n in NAMED if n in lessons and n not in references] == []


def test_every_reference_has_a_year_a_stable_link_and_the_lessons_that_use_it():
    rows = reference_rows()
    assert len(rows) >= 25
    for work, year, link, use, lessons in rows:
        assert re.fullmatch(r"(19|20)\d\d|—", year), f"{work}: year {year!r}"
        assert re.search(r"\]\(https://", link), f"{work}: no https link"
        assert len(use) >= 10, f"{work}: say what the course uses from it"
        assert re.search(
            r"\]\((\.\./(notebooks|exercises)/\d\d_\w+\.ipynb|instructors\.md)\)", lessons
        ), work


@pytest.mark.parametrize("page", ["docs/glossary.md", "docs/references.md"])
def test_the_readme_links_the_pages_around_the_lessons(page):
    assert f"]({page})" in (ROOT / "README.md").read_text()


def test_every_lesson_ends_with_its_links_and_they_are_current(load_script):
    # The last cell links the previous and next lesson, the exercise and the references;
    # tools/lesson_links.py writes it from docs/references.md and the notebooks present.
    lesson_links = load_script("tools/lesson_links.py")
    assert lesson_links.main(["--check"]) == 0, "run python tools/lesson_links.py"
    order = lesson_links.lessons()
    for index, path in enumerate(order):
        last = json.loads(path.read_text())["cells"][-1]
        text = "".join(last["source"])
        assert last["cell_type"] == "markdown" and text.startswith(lesson_links.MARKER), path.name
        if index:
            assert f"]({order[index - 1].name})" in text, f"{path.name}: no link to the previous"
        if index + 1 < len(order):
            assert f"]({order[index + 1].name})" in text, f"{path.name}: no link to the next"
        if (ROOT / "exercises" / path.name).exists():
            assert f"](../exercises/{path.name})" in text, f"{path.name}: no link to its exercise"


def test_every_lesson_ends_with_questions_that_make_the_learner_predict():
    # Before its links: 3 to 5 numbered questions, each with its answer folded in <details>,
    # at least one asking to predict an output before running it.
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = "".join(cells[-2]["source"])
        assert text.startswith("## Check your understanding"), f"{path.name}: no questions"
        questions = re.findall(r"^\d+\. ", text, re.M)
        answers = re.findall(
            r"<details><summary>Answer</summary>\n\n(.+?)\n\s*</details>", text, re.S
        )
        assert 3 <= len(questions) <= 5 and len(answers) == len(questions), path.name
        assert re.search(r"^\d+\. \*\*Predict\.\*\*", text, re.M), f"{path.name}: no prediction"
