"""The package works installed from a wheel, away from the repository: it ships its course model
and the student notebooks."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tfx_course.decoding import translate
from tfx_course.pretrained import load_course_model

REPO = Path(__file__).resolve().parents[1]
SENTENCE = "Ein Mann fährt mit dem Fahrrad die Straße hinunter."

# Runs in the fresh environment, from a folder outside the repository.
INSTALLED = """
import sys
from pathlib import Path

import tfx_course
from tfx_course.decoding import translate
from tfx_course.pretrained import course_checkpoint_dir, load_course_model

repo, site = Path(sys.argv[1]), Path(sys.argv[2])
package = Path(tfx_course.__file__).resolve().parent
assert package.parent == site, package  # the installed copy, not the repository's
assert course_checkpoint_dir().resolve().parent == package
assert not any(Path(p or ".").resolve() in (repo, repo / "tfx_course") for p in sys.path), sys.path
# A fresh exercise notebook comes from the package, with no solutions folder anywhere near.
from tfx_course.grading.classroom import reset_exercise

fresh, _ = reset_exercise("01", Path.cwd())
assert fresh.read_bytes() == (package / "student_notebooks" / fresh.name).read_bytes()
model, tokenizer = load_course_model()
print(translate(model, [sys.argv[3]], tokenizer, tokenizer, max_len=80)[0])
"""


def _major(version: str) -> int:
    return int(version.split(".")[0])


def test_a_wheel_installed_outside_the_repository_loads_the_course_model_and_translates(tmp_path):
    # Build from a copy of what the package is made of, so no earlier build/ folder can help.
    source = tmp_path / "source"
    shutil.copytree(REPO / "tfx_course", source / "tfx_course", ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copyfile(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(source),
        "--no-deps",
        "-q",
        "-w",
        str(wheels),
    ]
    if _major(importlib.metadata.version("setuptools")) >= 77:  # else pip fetches it (network)
        build.append("--no-build-isolation")
    subprocess.run(build, cwd=tmp_path, check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("tfx_course-*.whl")
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*install, "--target", str(site), str(wheel)], check=True, capture_output=True)
    # torch, tokenizers and sacrebleu come from this environment: a path line, no other .pth runs.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run(
        [python, "-I", "-c", INSTALLED, str(REPO), str(site), SENTENCE],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    model, tokenizer = load_course_model()
    expected = translate(model, [SENTENCE], tokenizer, tokenizer, max_len=80)[0]
    assert done.stdout.strip() == expected and len(expected.split()) >= 4
    assert (site / "tfx_course" / "course_checkpoint" / "model.pt").is_file()
    shipped = sorted(
        p.name for p in (site / "tfx_course" / "student_notebooks").glob("[0-9][0-9]_*.ipynb")
    )
    assert shipped == sorted(p.name for p in (REPO / "exercises").glob("[0-9][0-9]_*.ipynb"))
    assert (tmp_path / "01_self_attention.ipynb").is_file()  # written by the reset above
