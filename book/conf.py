"""Sphinx configuration of the course website (`make book`).

The source folder is the repository root, so that the README's links to `notebooks/...` and
`docs/...` resolve as they do on the repository's page. Only the files in `include_patterns` become
pages: the README (home page), the lessons with their stored outputs (never re-run), the student
exercise notebooks (never `exercises/solutions/`) and every `docs/*.md` guide.
"""

import os
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ConfigError

BOOK = Path(__file__).resolve().parent
MATHJAX = BOOK / "node_modules" / "mathjax" / "es5"
# What MathJax 3 loads from its own folder: the combined TeX/MathML/CHTML file, its fonts, the TeX
# extensions it loads on demand, the menu and the accessibility parts (speech included).
MATHJAX_PARTS = ["tex-mml-chtml.js", "input/tex/extensions", "output/chtml", "ui", "a11y", "sre"]

project = "tfx_course"
author = "the tfx_course authors"
copyright = "the tfx_course authors; code MIT, text and figures CC BY 4.0"
root_doc = "README"
include_patterns = [
    "README.md",
    "notebooks/[0-9][0-9]_*.ipynb",
    "exercises/[0-9][0-9]_*.ipynb",
    "docs/*.md",
]
exclude_patterns = [".*", "build", "book", "**/.ipynb_checkpoints", "exercises/solutions"]
# The navigation: appended to the home page when it is read, so the README stays plain Markdown.
TOCTREES = {"Lessons": "notebooks/*", "Exercises": "exercises/*", "Guides": "docs/*"}

extensions = ["myst_nb"]
nb_execution_mode = "off"  # the stored outputs are the ones nbval verified
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# Math renders in the page with a local MathJax copy: nothing is fetched from a CDN.
mathjax_path = "mathjax/tex-mml-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "tfx_course: the Transformer from first principles"
html_sourcelink_suffix = ""  # "Download this notebook" serves the .ipynb itself
html_last_updated_fmt = None
# The figures are drawn on white; an empty default would also log a console error on first visit.
html_context = {"default_mode": "light"}
# The header already has a search field: the sidebar keeps the title and the navigation.
html_sidebars = {"**": ["navbar-logo.html", "sbt-sidebar-nav.html"]}
html_theme_options = {
    "use_download_button": True,
    "use_fullscreen_button": False,
    "launch_buttons": {},
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "navigation_with_keys": False,
}
REPOSITORY_URL = os.environ.get("TFX_COURSE_REPOSITORY_URL", "")
if REPOSITORY_URL:  # set by the publishing workflow
    html_theme_options |= {"repository_url": REPOSITORY_URL, "use_repository_button": True}


def add_toctrees(app: Sphinx, docname: str, source: list[str]) -> None:
    """Append the site's hidden navigation to the home page."""
    if docname != app.config.root_doc:
        return
    for caption, pattern in TOCTREES.items():
        source[0] += (
            f"\n\n```{{toctree}}\n:caption: {caption}\n:glob:\n:hidden:\n\n{pattern}\n```\n"
        )


def run_locally_note(docname: str) -> str:
    """Return the HTML that tells how to run this page's notebook locally."""
    path = f"{docname}.ipynb"
    href = "../" * docname.count("/") + f"_sources/{path}"
    if docname.startswith("exercises/"):
        shown = "the student version of the exercises, without outputs"
        check = f"<code>tfx-course check {Path(docname).name[:2]}</code>"
        then = f"write your answers and run the check cells; {check} grades the saved notebook"
    else:
        shown = "the lesson with its stored outputs: the results to expect, which CI re-runs"
        shown += " and compares"
        then = "run it from the top"
    return (
        '<div class="admonition tip run-locally"><p class="admonition-title">Run it yourself</p>'
        f"<p>This page is <code>{path}</code>, {shown}. To run it, clone the course and type "
        "<code>make lab</code>: it sets up the pinned environment and opens JupyterLab. Open "
        f"<code>{path}</code> there and {then}. "
        f'<a class="reference download" href="{href}" download>Download this notebook</a>.'
        "</p></div>"
    )


def add_run_locally_note(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Put the run-it-yourself note under the title of every notebook page."""
    if not app.env.doc2path(docname).name.endswith(".ipynb"):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not isinstance(section[0], nodes.title):
        raise ValueError(f"{docname}: the notebook's first cell must start with a # title")
    section.insert(1, nodes.raw("", run_locally_note(docname), format="html"))


def finish_site(app: Sphinx, exception: Exception | None) -> None:
    """Copy MathJax into the site and give the site an index.html (the home page)."""
    if exception is not None or app.builder.format != "html":
        return
    copy_mathjax(Path(app.outdir) / "_static" / "mathjax")
    # Web servers open index.html; the home page is the README, at the same folder depth.
    shutil.copy2(Path(app.outdir) / f"{app.config.root_doc}.html", Path(app.outdir) / "index.html")


def check_mathjax(app: Sphinx) -> None:
    """Stop before reading any page when the local MathJax copy is missing."""
    if not (MATHJAX / MATHJAX_PARTS[0]).is_file():
        raise ConfigError(
            f"MathJax is missing from {MATHJAX}: `make book` installs it from "
            "book/package-lock.json with `npm ci --prefix book` (Node.js and npm are needed)"
        )


def copy_mathjax(target: Path) -> None:
    """Copy the parts of MathJax the pages load into target."""
    for part in MATHJAX_PARTS:
        source = MATHJAX / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)


def setup(app: Sphinx) -> dict[str, bool]:
    """Connect the site's additions to the build."""
    app.connect("builder-inited", check_mathjax)
    app.connect("source-read", add_toctrees)
    app.connect("doctree-resolved", add_run_locally_note)
    app.connect("build-finished", finish_site)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
