"""Tests for tfx_course.files: atomic writes and JSON."""

from __future__ import annotations

import pytest

from tfx_course.files import atomic_open, atomic_write_text, write_json


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    assert atomic_write_text(path, "first") == path
    atomic_write_text(path, "zweite ▁")
    assert path.read_text(encoding="utf-8") == "zweite ▁"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="stop"), atomic_open(path, "wb", suffix=".part") as f:
        f.write(b"half")
        assert [p.suffix for p in tmp_path.iterdir() if p != path] == [".part"]
        raise RuntimeError("stop")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_open_refuses_modes_that_do_not_write_a_whole_file(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_open(tmp_path / "a.txt", "a"):
            pass


def test_write_json_writes_indented_utf8_with_a_final_newline(tmp_path):
    path = write_json(tmp_path / "deep" / "r.json", {"bleu": 24.5, "text": "Mädchen"})
    assert path.read_text(encoding="utf-8") == '{\n  "bleu": 24.5,\n  "text": "Mädchen"\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
