"""Tests for the Tatoeba French-English data (tfx_course.data.tatoeba): download, reading, split.

Real-data tests read the verified zip from ``$TFX_COURSE_DATA`` (CI sets it) or the user cache;
download tests serve a small fake zip from a local HTTP server, never the network.
"""

import hashlib
import io
import random
import zipfile
from pathlib import Path

import pytest
from fake_server import FakeServer

from tfx_course.cli import main
from tfx_course.data import download, tatoeba
from tfx_course.data.download import ChecksumError, DataError, DownloadError, MissingDataError
from tfx_course.data.tatoeba import (
    download_tatoeba,
    load_tatoeba,
    read_tatoeba_pairs,
    split_of_groups,
    tatoeba_status,
)

# ---------------------------------------------------------------------------------------------
# Real data (read only). Counts and sha256 as published in the data's SOURCE.md.

LINES = 167_130
DISTINCT_ENGLISH = 116_830
MEMBER_SHA256 = "0bb85dbaa1c896844649094d7eaf2e34bee34e84fe362b26ce7e8f2e12aae104"


@pytest.fixture(scope="module")
def real_pairs(tatoeba_root):
    return read_tatoeba_pairs(tatoeba_root / "tatoeba-fra-eng" / "fra-eng.zip")


def test_real_zip_is_read_without_loss(real_pairs):
    assert len(real_pairs) == LINES
    assert len({english for english, _ in real_pairs}) == DISTINCT_ENGLISH
    text = "".join(f"{english}\t{french}\n" for english, french in real_pairs)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == MEMBER_SHA256  # every character
    # French typography: "Cours !" is written with a narrow no-break space (U+202F).
    assert real_pairs[:3] == [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours\u202f!")]


def test_real_splits_share_no_sentence_and_have_the_documented_sizes(tatoeba_root):
    splits = {name: load_tatoeba(name, tatoeba_root) for name in ("train", "val", "test")}
    assert sum(len(pairs) for pairs in splits.values()) == LINES
    for side in (0, 1):  # French, then English
        seen = [{pair[side] for pair in pairs} for pairs in splits.values()]
        assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    for name in ("val", "test"):  # about 2% of the pairs each
        assert 0.015 < len(splits[name]) / LINES < 0.025, (name, len(splits[name]))
    assert ("Va !", "Go.") in splits["train"] + splits["val"] + splits["test"]
    assert load_tatoeba("val", tatoeba_root) == splits["val"]  # the same every time
    assert tatoeba_status(tatoeba_root) == {"fra-eng.zip": "ok"}


def test_the_split_depends_on_the_text_not_on_the_order(real_pairs):
    sample = random.Random(0).sample(real_pairs, 20_000)
    # Groups are formed within the pairs given: compare on a sample, shuffled two ways.
    first = dict(zip(sample, split_of_groups(sample), strict=True))
    shuffled = sample[::-1]
    assert dict(zip(shuffled, split_of_groups(shuffled), strict=True)) == first


# ---------------------------------------------------------------------------------------------
# The split rule on pairs built for it


def test_pairs_linked_by_a_shared_sentence_stay_together():
    pairs = [(f"English {i}.", f"Français {i}.") for i in range(2000)]
    # Chains: English 0 also says Français 1, so groups {0, 1}, {2, 3}, ... must share a split.
    pairs += [(f"English {i}.", f"Français {i + 1}.") for i in range(0, 2000, 2)]
    names = split_of_groups(pairs)
    by_english = {}
    for (english, _), name in zip(pairs, names, strict=True):
        assert by_english.setdefault(english, name) == name
    for i in range(0, 2000, 2):
        assert by_english[f"English {i}."] == by_english[f"English {i + 1}."]
    assert {"train", "val", "test"} == set(names)


# ---------------------------------------------------------------------------------------------
# A fake zip served locally

FAKE = [("Go.", "Va !"), ("Hi.", "Salut !"), ("Hi.", "Salut."), ("Thank you.", "Merci.")]


def _zip(lines: list[str], member: str = "fra-eng/fra.txt") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, "".join(line + "\n" for line in lines))
        archive.writestr("__MACOSX/._fra-eng", b"\x00" * 12)  # as in the real zip: skipped
    return buffer.getvalue()


FILES = {"fra-eng.zip": _zip([f"{en}\t{fr}" for en, fr in FAKE])}
SUMS = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}


@pytest.fixture
def server():
    s = FakeServer(FILES)
    yield s
    s.close()


def _download(root: Path, server: FakeServer, **kw) -> Path:
    return download_tatoeba(root, base_url=server.url, checksums=SUMS, progress=False, **kw)


def test_download_verifies_saves_reads_and_skips_what_is_there(tmp_path, server):
    folder = _download(tmp_path, server)
    assert folder == tmp_path / "tatoeba-fra-eng"
    assert [p.name for p in folder.iterdir()] == ["fra-eng.zip"]
    everything = [p for name in ("train", "val", "test") for p in load_tatoeba(name, tmp_path, checksums=SUMS)]  # fmt: skip
    assert sorted(everything) == sorted((fr, en) for en, fr in FAKE)  # (French, English)
    server.requests.clear()
    _download(tmp_path, server)
    assert server.requests == []


def test_interrupted_download_leaves_no_file_and_says_what_is_missing(tmp_path, server):
    server.truncate.add("fra-eng.zip")
    with pytest.raises(DownloadError) as err:
        _download(tmp_path, server)
    assert list((tmp_path / "tatoeba-fra-eng").iterdir()) == []
    message = str(err.value)
    assert server.url + "fra-eng.zip" in message and "Missing from" in message


def test_a_wrong_checksum_saves_nothing(tmp_path, server):
    server.files["fra-eng.zip"] = _zip(["Go.\tFile !"])
    with pytest.raises(ChecksumError, match=r"fra-eng\.zip has sha256 .* expected"):
        _download(tmp_path, server)
    assert list((tmp_path / "tatoeba-fra-eng").iterdir()) == []


def test_a_corrupt_zip_is_removed_and_named(tmp_path):
    folder = tmp_path / "tatoeba-fra-eng"
    folder.mkdir()
    (folder / "fra-eng.zip").write_bytes(b"not a zip")
    with pytest.raises(ChecksumError) as err:
        load_tatoeba("train", tmp_path, checksums=SUMS)
    assert "removed" in str(err.value) and "tfx-course data download" in str(err.value)
    assert not (folder / "fra-eng.zip").exists()


def test_loading_without_the_zip_says_how_to_get_it(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_tatoeba("test", tmp_path)
    message = str(err.value)
    assert tatoeba.TATOEBA_URL + "fra-eng.zip" in message
    assert str(tmp_path / "tatoeba-fra-eng") in message and "TFX_COURSE_DATA" in message


def test_a_zip_without_the_member_or_with_a_bad_line_is_refused(tmp_path):
    wrong_member = tmp_path / "a.zip"
    wrong_member.write_bytes(_zip(["Go.\tVa !"], member="fra.txt"))
    with pytest.raises(DataError, match="fra-eng/fra.txt"):
        read_tatoeba_pairs(wrong_member)
    bad_line = tmp_path / "b.zip"
    bad_line.write_bytes(_zip(["Go.\tVa !", "no tab here"]))
    with pytest.raises(DataError, match="line 2"):
        read_tatoeba_pairs(bad_line)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        load_tatoeba("validation")


def test_each_read_checks_the_sha256_once(tmp_path, server, monkeypatch):
    _download(tmp_path, server)
    calls = []
    real = download.sha256_file
    monkeypatch.setattr(download, "sha256_file", lambda path: calls.append(path) or real(path))
    for split in ("train", "val", "test"):
        load_tatoeba(split, tmp_path, checksums=SUMS)
    assert len(calls) <= 1


def test_cli_data_status_and_download_cover_tatoeba(capsys, tatoeba_root, tmp_path):
    assert main(["data", "status", "--dataset", "tatoeba", "--root", str(tatoeba_root)]) == 0
    assert main(["data", "download", "--dataset", "tatoeba", "--root", str(tatoeba_root)]) == 0
    assert "Tatoeba: all files present and verified" in capsys.readouterr().out
    assert main(["data", "status", "--dataset", "tatoeba", "--root", str(tmp_path)]) == 1
    assert "missing  fra-eng.zip" in capsys.readouterr().out


def test_the_command_line_names_every_data_set_of_the_table():
    from tfx_course import cli
    from tfx_course.data.datasets import DATASETS

    assert cli.DATASETS == tuple(DATASETS)
    assert [data.name for data in cli._data_sets("all")] == ["Multi30k", "Tatoeba"]
