"""Tests that keep the project's set-up files consistent with each other."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        line = line.split(";")[0].strip()  # a pin may carry an environment marker
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_environment_yml_pins_match_the_lock_file():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = _lock_pins()
    checked = 0
    for requirement in pip_section:
        if requirement.startswith("-e"):
            continue
        name, version = requirement.split("==")
        key = name.lower().replace("_", "-")
        assert key in pins, f"{name} is pinned in environment.yml but not in requirements/lock.txt"
        assert pins[key] == version, f"{name}: environment.yml has {version}, lock has {pins[key]}"
        checked += 1
    assert checked >= 10


def test_every_direct_dependency_is_locked_and_in_environment_yml():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"dev", "book"} <= set(extras)
    direct = project["dependencies"] + [r for group in extras.values() for r in group]
    env_text = (ROOT / "environment.yml").read_text().lower()
    pins = _lock_pins()
    for requirement in direct:
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} (pyproject.toml) has no exact pin in requirements/lock.txt"
        assert f"{name}==" in env_text, f"{name} (pyproject.toml) is missing from environment.yml"


def test_torch_is_pinned_without_a_local_build_tag():
    # "+cpu" builds exist only on some platforms; the plain version installs everywhere.
    assert re.fullmatch(r"\d+\.\d+\.\d+", _lock_pins()["torch"])


def test_ci_calls_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "TFX_COURSE_DATA" in ci
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme


def test_ci_builds_the_website_and_tests_it_in_a_browser_after_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test\n") < ci.index("make test-book")
    assert "apt-get install" in ci and "chromium" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-book: book$", makefile, re.M)
    assert re.search(r"sphinx-build .*-W ", makefile)  # warnings fail the build
    workflow = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert "make book" in workflow and "actions/deploy-pages" in workflow


def test_make_test_runs_lint_unit_and_strict_nbval():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*lint.*unit.*nbval", makefile, re.M)
    assert "--nbval " in makefile or "--nbval\\" in makefile or "--nbval --" in makefile
    assert "--nbval-lax" not in makefile
    assert "--allow-root" in makefile


def test_every_lesson_is_committed_with_outputs():
    import json

    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert lessons, "no lessons found"
    for path in lessons:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        unrun = [c for c in cells if c["source"] and c["execution_count"] is None]
        assert not unrun, f"{path.name}: {len(unrun)} code cells have no stored outputs"


def test_every_lesson_and_exercise_opens_with_a_title_cell():
    # The first cell is the page's title on the website and states goals, time and prerequisites;
    # an indented line would turn it into a code block.
    notebooks = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
    notebooks += sorted(ROOT.glob("exercises/**/[0-9][0-9]_*.ipynb"))
    assert len(notebooks) >= 3
    for path in notebooks:
        first = json.loads(path.read_text())["cells"][0]
        text = "".join(first["source"])
        assert first["cell_type"] == "markdown" and text.startswith("# "), path.name
        assert "**Goals**" in text and "**Time**" in text, f"{path.name}: goals or time missing"
        indented = [line for line in text.splitlines() if line.startswith("    ")]
        assert not indented, f"{path.name}: indented lines in the first cell: {indented[:2]}"


def test_the_gpu_script_imports_with_torch_tokenizers_and_sacrebleu_alone():
    # A bare GPU machine has torch, tokenizers and sacrebleu and nothing else of ours:
    # block the other third-party packages and import the package and the GPU script.
    blocked = ["matplotlib", "nbformat", "nbclient", "jupyter_client", "yaml", "IPython"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "import importlib.util, tfx_course\n"
        "spec = importlib.util.spec_from_file_location('g', 'tools/gpu/gpu_run.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'matplotlib' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_instructors_timetable_is_the_one_the_timing_results_give(load_script):
    # Run times from results/lesson_times_cpu.json, prose lengths from the notebooks as they
    # are now: editing a lesson or an exercise without updating the guide fails here.
    time_lessons = load_script("tools/time_lessons.py")
    cpu = json.loads((ROOT / "results" / "lesson_times_cpu.json").read_text())
    gpu_file = ROOT / "results" / "lesson_times_gpu.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.exists() else None
    table = time_lessons.timetable(cpu, gpu)
    assert table in (ROOT / "docs" / "instructors.md").read_text()
    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(table.splitlines()) == 2 + len(lessons)
    assert all(r["error"] is None for r in cpu["notebooks"])


def test_setup_keeps_nbgrader_out_of_the_learners_jupyterlab():
    # `make setup` (which every `make test` runs first) turns nbgrader's extensions off.
    config = Path(sys.prefix) / "etc" / "jupyter"
    page = json.loads((config / "labconfig" / "page_config.json").read_text())
    assert page["disabledExtensions"].get("@jupyter/nbgrader") is True
    servers = json.loads((config / "jupyter_server_config.d" / "nbgrader.json").read_text())
    for name in servers["ServerApp"]["jpserver_extensions"]:  # each one switched off on its own
        own = json.loads((config / "jupyter_server_config.d" / f"{name}.json").read_text())
        assert own["ServerApp"]["jpserver_extensions"][name] is False, name


def test_setup_turns_off_jupyterlabs_news_pop_up():
    # `make setup` disables the plugin that asks "get notified about official Jupyter news?";
    # this is the page config the lab server builds and serves to the browser.
    from jupyter_core.paths import jupyter_path
    from jupyterlab_server.config import get_page_config

    served = get_page_config(jupyter_path("labextensions"), logger=None)
    disabled = served.get("disabledExtensions", [])
    assert "@jupyterlab/apputils-extension:announcements" in disabled, disabled
    assert "@jupyter/nbgrader" in disabled, disabled


def test_readme_lists_every_exercise_of_every_lesson():
    from tfx_course.grading.exercises import LESSONS

    readme = (ROOT / "README.md").read_text()
    for lesson, names in LESSONS.items():
        row = f"| {lesson} | " + ", ".join(f"`{n}`" for n in names) + " |"
        assert row in readme, f"README's exercise table lacks or misstates lesson {lesson}"


def test_each_lesson_states_the_cpu_time_that_was_measured(load_script):
    # The first cell says "about N s to run", N from results/lesson_times_cpu.json
    # (`tools/time_lessons.py --stamp` writes it), so the stated time cannot drift.
    time_lessons = load_script("tools/time_lessons.py")
    cpu = json.loads((ROOT / "results" / "lesson_times_cpu.json").read_text())
    measured = {r["notebook"]: r["seconds"] for r in cpu["notebooks"] if r["kind"] == "lesson"}
    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert set(measured) == {p.name for p in lessons}, "time every lesson: tools/time_lessons.py"
    for path in lessons:
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        stated = f"**Time**: CPU (2 cores): {time_lessons.stated_time(measured[path.name])} to run"
        assert stated in first, f"{path.name} should state '{stated}'"


def test_the_conda_route_registers_the_kernel_the_notebooks_ask_for():
    from tfx_course import doctor

    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    kernels = {json.loads(p.read_text())["metadata"]["kernelspec"]["name"] for p in lessons}
    assert kernels == {"tfx-course"} == {doctor.KERNEL}
    assert re.search(r"^KERNEL := tfx-course$", (ROOT / "Makefile").read_text(), re.M)
    command = 'python -m ipykernel install --user --name tfx-course --display-name "Python (tfx_course)"'  # fmt: skip
    assert command in (ROOT / "environment.yml").read_text()
    assert command in (ROOT / "README.md").read_text()
    assert "conda env create -f environment.yml" in (ROOT / "README.md").read_text()


def test_license_covers_code_and_prose_with_a_holder():
    text = (ROOT / "LICENSE").read_text()
    assert "MIT License" in text and "Copyright (c) the tfx_course authors" in text
    assert "CC BY 4.0" in text and "creativecommons.org/licenses/by/4.0" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    readme = (ROOT / "README.md").read_text()
    for heading in ("## License", "## Data and its terms"):
        assert heading in readme
    assert "CC BY 2.0" in readme and "non-commercial" in readme
