"""The container image's recipe (Dockerfile), checked without a Docker engine: what it copies
exists and reaches the build, what it installs comes from the lock, and lint-style rules."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def _ignored(relative: str) -> bool:
    """Whether .dockerignore keeps ``relative`` (a path in the repository) out of the build."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        simple = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], simple)
            ):
                return True
    return False


def test_every_copied_file_exists_and_reaches_the_build():
    copies = [args.split() for kind, args in _instructions() if kind == "COPY"]
    assert copies, "the Dockerfile copies the course"
    for *sources, _target in copies:
        for source in sources:
            if source == ".":
                continue
            assert (ROOT / source).exists(), source
            assert not _ignored(source), f"{source} is left out by .dockerignore"


def test_the_build_context_has_what_make_setup_needs_and_leaves_out_environments():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    kept = {name for name in tracked.stdout.splitlines() if not _ignored(name)}
    needed = ["Makefile", "pyproject.toml", "requirements/lock.txt", "tools/install_torch.py",
              "tfx_course/course_checkpoint/model.pt", "tfx_course/course_checkpoint/tokenizer.json",
              "notebooks/00_setup.ipynb", "exercises/01_self_attention.ipynb", "README.md",
              "docker/start.sh", "tfx_course/student_notebooks/01_self_attention.ipynb"]  # fmt: skip
    assert not [name for name in needed if name not in kept]
    for name in (".venv/bin/python", ".git/HEAD", "build/book/html/index.html", "tfx_course/__pycache__/x.pyc"):  # fmt: skip
        assert _ignored(name), name


def test_everything_installed_comes_from_the_lock():
    runs = " ".join(args for kind, args in _instructions() if kind == "RUN")
    installs = re.findall(r"pip install[^;&]*", runs)
    assert installs, "the hub's single-user server is installed with pip when asked"
    for install in installs:
        assert "-c requirements/lock.txt" in install, install
        # The only pin not in the lock: the hub's own version, which must match the hub.
        assert re.findall(r'"([A-Za-z0-9_.-]+)==', install) == ["jupyterhub"], install
    assert 'if [ -n "$JUPYTERHUB_VERSION" ]' in runs
    assert "tools/install_torch.py --build cpu" in runs  # torch: the lock's pin, CPU build
    assert "make setup TORCH_BUILD=cpu" in runs
    assert not re.search(r"pip install[^;&]*\btorch\b", runs), "torch only through the lock's pin"


def test_lint_style_rules():
    steps = _instructions()
    kinds = [kind for kind, _ in steps]
    base = steps[0][1]
    assert kinds[0] == "FROM" and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    for kind, args in steps:
        if kind == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "-y" in args
            assert "rm -rf /var/lib/apt/lists/*" in args and "apt-get update" in args
        if kind == "WORKDIR":
            assert args.startswith("/"), args
        if kind in ("CMD", "ENTRYPOINT"):
            json.loads(args)  # the exec form: signals reach the server
    user = [args for kind, args in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert kinds.index("USER") < kinds.index("ENTRYPOINT") < kinds.index("CMD")
    assert ("EXPOSE", "8888") in steps
    command = json.loads(dict(steps)["CMD"])
    assert command[:2] == ["jupyter", "lab"] and "--ip=0.0.0.0" in command
    assert "--port=8888" in command


def test_the_start_script_gives_the_learner_a_copy_of_the_course(tmp_path):
    script = ROOT / "docker" / "start.sh"
    mode = subprocess.run(["git", "ls-files", "-s", str(script)], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert mode.stdout.startswith("100755"), "start.sh must be committed executable"
    env = {**os.environ, "HOME": str(tmp_path), "TFX_COURSE_HOME": str(ROOT)}
    done = subprocess.run([str(script), "pwd"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    course = tmp_path / "tfx_course"
    assert done.stdout.strip() == str(course)
    for part in ("notebooks/00_setup.ipynb", "exercises/01_self_attention.ipynb", "README.md"):
        assert (course / part).read_bytes() == (ROOT / part).read_bytes()
    (course / "notebooks" / "00_setup.ipynb").write_text("my edits")
    assert subprocess.run([str(script), "true"], env=env).returncode == 0
    assert (course / "notebooks" / "00_setup.ipynb").read_text() == "my edits", "never overwritten"


def test_the_readme_says_how_to_build_run_and_hub_the_image():
    readme = (ROOT / "README.md").read_text()
    for text in ("docker build -t tfx_course .", "docker run --rm -p 8888:8888 tfx_course",
                 "--build-arg JUPYTERHUB_VERSION=", "jupyterhub-singleuser"):  # fmt: skip
        assert text in readme, text
