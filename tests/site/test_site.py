"""The course website (`make book`) opened page by page in headless Chromium, offline.

Run by `make test-book`, which builds the site first. Every request to a host other than the local
server is blocked and counts as a failure, so a page that needs a CDN fails here as it would in a
workshop room without network. Screenshots for a person to look at go to build/book-test/.
"""

import functools
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "book" / "html"
OUT = ROOT / "build" / "book-test"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium calls home at start, which a closed network
# refuses; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SPECIAL_PAGES = {"index.html", "search.html", "genindex.html"}
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")

# Wait for MathJax and for every image (lazy ones made eager), then read what the page shows.
INSPECT_PAGE = """async () => {
  if (window.MathJax && window.MathJax.startup) { await window.MathJax.startup.promise; }
  const images = [...document.images];
  images.forEach((img) => { img.loading = "eager"; });
  const loaded = (img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done); img.addEventListener("error", done);
  });
  const late = new Promise((done) => setTimeout(done, 15000));
  await Promise.race([Promise.all(images.map(loaded)), late]);
  const math = [...document.querySelectorAll("span.math, div.math")];
  return {
    images: images.filter((img) => img.closest("article")).length,
    broken: images.filter((img) => !(img.complete && img.naturalWidth > 0))
      .map((img) => img.getAttribute("src")),
    math: math.length,
    unrendered: math.filter((m) => !m.querySelector("mjx-container"))
      .map((m) => m.textContent.slice(0, 60)),
    math_errors: document.querySelectorAll("mjx-merror").length,
    prev: document.querySelector("a.left-prev")?.href ?? null,
    next: document.querySelector("a.right-next")?.href ?? null,
    download: document.querySelector(".run-locally a.download")?.href ?? null,
  };
}"""


@dataclass
class Visit:
    """What one page showed, and what went wrong while it loaded."""

    page: str
    problems: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


class QuietHandler(SimpleHTTPRequestHandler):
    """Serve files without logging every request to the test's output."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class LocalServer(ThreadingHTTPServer):
    """Serve the site; a tab closed while a file was still on its way is not an error."""

    def handle_error(self, request: object, client_address: tuple) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def site_pages() -> list[str]:
    """Return every HTML page of the site, relative to its root."""
    pages = [p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")]
    return sorted(p for p in pages if not p.startswith("_"))


def content_pages() -> list[str]:
    """Return the pages the navigation links: the home page, lessons, exercises, guides."""
    return [p for p in site_pages() if p not in SPECIAL_PAGES]


def notebooks() -> list[Path]:
    """Return the lessons and the student exercise notebooks."""
    return sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")) + sorted(
        ROOT.glob("exercises/[0-9][0-9]_*.ipynb")
    )


def expected_images(notebook: Path) -> int:
    """Count the figures a notebook stores: image outputs and images in Markdown cells."""
    count = 0
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            count += len(re.findall(r"!\[[^\]]*\]\(|<img\b", "".join(cell["source"])))
        for output in cell.get("outputs", []):
            count += any(kind in output.get("data", {}) for kind in IMAGE_TYPES)
    return count


def has_math(notebook: Path) -> bool:
    """Say whether a notebook's Markdown cells contain TeX between dollar signs."""
    cells = json.loads(notebook.read_text())["cells"]
    text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return re.search(r"\$[^$\s][^$]*\$", text) is not None


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no website in {SITE.relative_to(ROOT)}: build it with `make book`")
    return SITE


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = LocalServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or set "
            "CHROMIUM to a Chromium executable"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def blocked() -> list[str]:
    """The requests to other hosts that the browser made (and that were refused)."""
    return []


@pytest.fixture(scope="module")
def context(browser, blocked: list[str]):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

    def local_only(route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", local_only)
    yield context
    context.close()


def open_page(context, url: str, name: str) -> tuple[object, Visit]:
    """Open url in a new tab that records console errors and failed or blocked requests."""
    visit = Visit(name)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and visit.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: visit.problems.append(f"script error: {e}"))
    page.on("requestfailed", lambda r: visit.problems.append(f"request failed: {r.url}"))
    page.on(
        "response",
        lambda r: r.status >= 400 and visit.problems.append(f"HTTP {r.status}: {r.url}"),
    )
    page.goto(url, wait_until="load")
    return page, visit


@pytest.fixture(scope="module")
def visits(context, base_url: str) -> dict[str, Visit]:
    """Open every page of the site once and record what it showed."""
    visits = {}
    for name in site_pages():
        page, visit = open_page(context, base_url + name, name)
        visit.stats = page.evaluate(INSPECT_PAGE)
        page.close()
        visits[name] = visit
    return visits


def site_path(url: str | None, base_url: str) -> str | None:
    """Turn a link the browser resolved into a path of the site, or None if it leaves it."""
    if url is None or not url.startswith(base_url):
        return None
    return unquote(urlsplit(url).path).lstrip("/")


def test_the_site_has_a_page_for_every_lesson_exercise_and_guide(site: Path):
    sources = notebooks() + sorted(ROOT.glob("docs/*.md"))
    expected = ["README.html"] + [
        s.relative_to(ROOT).with_suffix(".html").as_posix() for s in sources
    ]
    assert len(sources) >= 20
    assert sorted(expected) == content_pages()


def test_no_solution_is_published(site: Path):
    published = [p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()]
    assert not [p for p in published if "solution" in p]
    # The solutions mark their answers; the student notebooks have none of these markers.
    exercise_files = [site / p for p in published if p.endswith(".ipynb") or "exercises/" in p]
    leaked = [p.name for p in exercise_files if "BEGIN SOLUTION" in p.read_text()]
    assert not leaked, f"pages carry exercise solutions: {leaked}"
    for student in sorted(ROOT.glob("exercises/[0-9][0-9]_*.ipynb")):
        html = (site / "exercises" / f"{student.stem}.html").read_text()
        assert "NotImplementedError" in html, f"{student.stem}: not the student version"


def test_every_page_loads_offline_without_errors(visits: dict[str, Visit], blocked: list[str]):
    problems = [f"{v.page}: {p}" for v in visits.values() for p in v.problems]
    assert not blocked, f"pages asked other hosts: {sorted(set(blocked))}"
    assert not problems, "\n".join(problems)
    assert len(visits) == len(content_pages()) + len(SPECIAL_PAGES)


def test_every_image_loads_and_every_figure_is_shown(visits: dict[str, Visit]):
    broken = {name: v.stats["broken"] for name, v in visits.items() if v.stats["broken"]}
    assert not broken, f"images that did not load: {broken}"
    for notebook in notebooks():
        page = notebook.relative_to(ROOT).with_suffix(".html").as_posix()
        assert visits[page].stats["images"] == expected_images(notebook), page
    assert sum(v.stats["images"] for v in visits.values()) >= 10


def test_math_is_rendered(visits: dict[str, Visit]):
    for name, visit in visits.items():
        stats = visit.stats
        assert not stats["unrendered"], f"{name}: math left as TeX: {stats['unrendered'][:3]}"
        assert stats["math_errors"] == 0, f"{name}: {stats['math_errors']} MathJax errors"
    for notebook in notebooks():
        page = notebook.relative_to(ROOT).with_suffix(".html").as_posix()
        assert (visits[page].stats["math"] > 0) == has_math(notebook), page


def test_next_and_previous_links_walk_every_page_in_order(visits, base_url: str):
    order, page = [], "README.html"
    while page is not None and page not in order:
        order.append(page)
        following = site_path(visits[page].stats["next"], base_url)
        assert following is None or (SITE / following).is_file(), f"{page}: next -> {following}"
        if following is not None:
            back = site_path(visits[following].stats["prev"], base_url)
            assert back == page, f"{following}: previous is {back}, expected {page}"
        page = following
    unreached = sorted(set(content_pages()) - set(order))
    assert not unreached, (
        f"next links from the home page stop at {order[-1]}, never reach {unreached}"
    )
    assert len(order) == len(content_pages())
    assert order[1].startswith("notebooks/00_") and order[-1].startswith("docs/")
    assert visits["README.html"].stats["prev"] is None


def test_every_notebook_page_links_its_notebook_to_run_locally(visits, base_url: str):
    for name, visit in visits.items():
        source = ROOT / Path(name).with_suffix(".ipynb")
        download = site_path(visit.stats["download"], base_url)
        if not source.is_file():
            assert download is None, name
            continue
        assert download is not None, f"{name}: no link to its notebook"
        assert (SITE / download).read_bytes() == source.read_bytes(), name


def test_every_lesson_page_states_its_goals_and_time(site: Path):
    for notebook in sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb")):
        html = (site / "notebooks" / f"{notebook.stem}.html").read_text()
        for words in ("Goals", "Time", "make lab", f"notebooks/{notebook.name}"):
            assert words in html, f"{notebook.stem}: '{words}' missing"


def test_search_finds_layernorm(context, base_url: str):
    page, visit = open_page(context, base_url + "search.html?q=LayerNorm", "search")
    page.wait_for_selector("#search-results li", timeout=30_000)
    hits = page.eval_on_selector_all("#search-results li a", "links => links.map(a => a.href)")
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=OUT / "search_layernorm.png")
    page.close()
    assert not visit.problems, visit.problems
    pages = {site_path(hit, base_url) for hit in hits}
    assert "notebooks/04_residual_and_layernorm.html" in pages, pages


def test_screenshots_for_a_person_to_look_at(context, base_url: str):
    shots = {
        "home.png": ("index.html", None),
        "lesson_04.png": ("notebooks/04_residual_and_layernorm.html", "div.math"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for filename, (name, anchor) in shots.items():
        page, visit = open_page(context, base_url + name, name)
        page.evaluate(INSPECT_PAGE)
        if anchor is not None:
            page.locator(anchor).first.scroll_into_view_if_needed()
        page.screenshot(path=OUT / filename)
        page.close()
        assert not visit.problems, visit.problems
        assert (OUT / filename).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
