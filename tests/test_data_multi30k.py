"""Tests for Multi30k download, checks and loading (tfx_course.data.multi30k).

Real-data tests read the verified copies from ``$TFX_COURSE_DATA`` (CI sets it) or, when that
is unset, from ``../shared/data`` beside the repository. Download tests serve small fake files
from a local HTTP server, so they never touch the network.
"""

import gzip
import hashlib
import socket
from pathlib import Path

import pytest
from fake_server import FakeServer

from tfx_course.cli import main
from tfx_course.data import download, multi30k
from tfx_course.data.multi30k import (
    ChecksumError,
    DownloadError,
    MissingDataError,
    Multi30kError,
    download_multi30k,
    load_multi30k,
    multi30k_status,
)
from tfx_course.data.subword import train_subword_tokenizer

# ---------------------------------------------------------------------------------------------
# Real data (read only)

# Line counts and sha256 of the decompressed text, as published in the data's SOURCE.md.
REAL = {
    "train": (29000, "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"),
    "val": (1014, "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"),
    "test2016": (1000, "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"),
}


@pytest.mark.parametrize("split", list(REAL))
def test_real_split_sizes_and_lossless_reading(data_root, split):
    pairs = load_multi30k(split, data_root)
    n, german_sha = REAL[split]
    assert len(pairs) == n
    german = "".join(de + "\n" for de, _ in pairs).encode("utf-8")
    assert hashlib.sha256(german).hexdigest() == german_sha  # every character read back
    stem = multi30k.SPLITS[split]
    for lang, side in (("de", 0), ("en", 1)):
        with gzip.open(data_root / "multi30k" / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
        assert pairs[0][side] == first


def test_real_first_pairs(data_root):
    assert load_multi30k("train", data_root)[0] == (
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
        "Two young, White males are outside near many bushes.",
    )
    # SOURCE.md: line 15 of this val.de says "... auf ihrem Cello."
    assert load_multi30k("val", data_root)[14][0].endswith("auf ihrem Cello.")
    assert multi30k_status(data_root) == dict.fromkeys(multi30k.MULTI30K_FILES, "ok")


def test_real_subword_round_trip(data_root):
    train = load_multi30k("train", data_root)
    tok = train_subword_tokenizer([s for pair in train for s in pair], vocab_size=8000)
    held_out = load_multi30k("val", data_root) + load_multi30k("test2016", data_root)
    for de, en in held_out:
        assert tok.decode(tok.encode(de)) == de
        assert tok.decode(tok.encode(en)) == en
    ids = tok.encode_batch([de for de, _ in held_out])
    assert sum(len(x) for x in ids) / len(ids) < 25  # about 15 subwords a sentence, with BOS/EOS


# ---------------------------------------------------------------------------------------------
# Fake files served locally

FAKE_TEXT = {"train": ["ein Hund", "zwei Katzen", "drei"], "val": ["Grüße"], "test2016": ["ja"]}
FAKE_ENGLISH = {"train": ["a dog", "two cats", "three"], "val": ["greetings"], "test2016": ["yes"]}


def _fake_files() -> dict[str, bytes]:
    files = {}
    for split, stem in multi30k.SPLITS.items():
        for lang, lines in (("de", FAKE_TEXT[split]), ("en", FAKE_ENGLISH[split])):
            text = "".join(line + "\n" for line in lines).encode("utf-8")
            files[f"{stem}.{lang}.gz"] = gzip.compress(text, mtime=0)
    return files


FILES = _fake_files()
SUMS = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}


@pytest.fixture
def server():
    s = FakeServer(FILES)
    yield s
    s.close()


def _download(root: Path, server: FakeServer, **kw) -> Path:
    return download_multi30k(root, base_url=server.url, checksums=SUMS, progress=False, **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in FILES)


def test_download_verifies_saves_and_skips_what_is_there(tmp_path, server, capsys):
    folder = download_multi30k(tmp_path, base_url=server.url, checksums=SUMS)  # with bars
    assert folder == tmp_path / "multi30k"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert "train.de.gz" in capsys.readouterr().err  # the progress bar names the file
    assert sorted(server.requests) == sorted(FILES)
    assert load_multi30k("train", tmp_path, checksums=SUMS) == list(
        zip(FAKE_TEXT["train"], FAKE_ENGLISH["train"], strict=True)
    )
    assert load_multi30k("val", tmp_path, checksums=SUMS) == [("Grüße", "greetings")]
    server.requests.clear()
    _download(tmp_path, server)
    assert server.requests == []  # present and verified: nothing fetched
    _download(tmp_path, server, force=True)
    assert sorted(server.requests) == sorted(FILES)
    assert _leftovers(folder) == []


def test_interrupted_download_leaves_no_file(tmp_path, server):
    server.truncate.add("val.en.gz")
    with pytest.raises(DownloadError) as err:
        _download(tmp_path, server)
    folder = tmp_path / "multi30k"
    assert not (folder / "val.en.gz").exists()
    assert _leftovers(folder) == []  # no temporary file left behind either
    assert "val.en.gz" in str(err.value) and server.url + "val.en.gz" in str(err.value)
    server.truncate.clear()
    _download(tmp_path, server)  # a second try completes the folder
    assert multi30k_status(tmp_path, SUMS) == dict.fromkeys(FILES, "ok")


def test_ctrl_c_during_a_download_leaves_no_file(tmp_path, server, monkeypatch):
    real_urlopen = download.urllib.request.urlopen

    class Interrupted:
        def __init__(self, response) -> None:
            self.response, self.headers, self.calls = response, response.headers, 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return self.response.read(10)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.response.close()

    monkeypatch.setattr(
        download.urllib.request, "urlopen", lambda *a, **kw: Interrupted(real_urlopen(*a, **kw))
    )
    with pytest.raises(KeyboardInterrupt):
        _download(tmp_path, server)
    assert list((tmp_path / "multi30k").iterdir()) == []


def test_download_with_a_wrong_checksum_saves_nothing(tmp_path, server):
    server.files["val.de.gz"] = gzip.compress(b"tampered\n", mtime=0)
    with pytest.raises(ChecksumError, match=r"val\.de\.gz has sha256 .* expected") as err:
        _download(tmp_path, server)
    assert SUMS["val.de.gz"] in str(err.value)
    assert not (tmp_path / "multi30k" / "val.de.gz").exists()
    assert _leftovers(tmp_path / "multi30k") == []


def _place(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "multi30k"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_corrupt_file_is_named_removed_and_fetched_again(tmp_path, server, capsys):
    folder = _place(tmp_path, {**FILES, "val.en.gz": b"not the file"})
    with pytest.raises(ChecksumError) as err:
        load_multi30k("val", tmp_path, checksums=SUMS)
    message = str(err.value)
    assert "val.en.gz" in message and "removed" in message and "tfx-course data download" in message
    assert not (folder / "val.en.gz").exists()
    (folder / "val.en.gz").write_bytes(b"corrupt again")
    server.requests.clear()
    _download(tmp_path, server)
    assert server.requests == ["val.en.gz"]
    assert "val.en.gz failed its sha256 check" in capsys.readouterr().out
    assert load_multi30k("val", tmp_path, checksums=SUMS) == [("Grüße", "greetings")]


def test_corrupt_file_in_a_read_only_folder_is_left_and_explained(tmp_path, monkeypatch):
    folder = _place(tmp_path, {**FILES, "train.de.gz": b"not the file"})
    monkeypatch.setattr(download, "_writable", lambda folder: False)
    with pytest.raises(ChecksumError, match="read-only") as err:
        load_multi30k("train", tmp_path, checksums=SUMS)
    assert "TFX_COURSE_DATA" in str(err.value) and "train.de.gz" in str(err.value)
    assert (folder / "train.de.gz").read_bytes() == b"not the file"
    (folder / "val.de.gz").unlink()
    with pytest.raises(Multi30kError, match="read-only"):
        download_multi30k(tmp_path, base_url="http://127.0.0.1:9/", checksums=SUMS)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/raw/"  # nothing listens there any more


def test_offline_download_says_what_is_missing_where_and_from_where(tmp_path):
    _place(tmp_path, {"train.de.gz": FILES["train.de.gz"]})
    url = _closed_port_url()
    with pytest.raises(DownloadError) as err:
        download_multi30k(tmp_path, base_url=url, checksums=SUMS, progress=False, timeout=5)
    message = str(err.value)
    assert str(tmp_path / "multi30k") in message
    missing = [name for name in FILES if name != "train.de.gz"]
    assert all(name in message and url + name in message for name in missing)
    assert "Missing from" in message and "train.de.gz," not in message
    assert "offline" in message


def test_a_failed_forced_download_keeps_the_verified_copy(tmp_path, server):
    _download(tmp_path, server)
    server.truncate.add("train.de.gz")
    with pytest.raises(DownloadError, match="were kept"):
        _download(tmp_path, server, force=True)
    assert (tmp_path / "multi30k" / "train.de.gz").read_bytes() == FILES["train.de.gz"]
    assert _leftovers(tmp_path / "multi30k") == []


def test_loading_without_the_files_says_how_to_get_them(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_multi30k("test2016", tmp_path)
    message = str(err.value)
    assert "test_2016_flickr.de.gz" in message and "test_2016_flickr.en.gz" in message
    assert multi30k.MULTI30K_URL + "test_2016_flickr.en.gz" in message
    assert str(tmp_path / "multi30k") in message and "TFX_COURSE_DATA" in message
    assert isinstance(err.value, FileNotFoundError)


def test_line_counts_must_match(tmp_path):
    files = {**FILES, "val.en.gz": gzip.compress(b"one\ntwo\n", mtime=0)}
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    _place(tmp_path, files)
    with pytest.raises(Multi30kError, match="val.de.gz has 1 lines but val.en.gz has 2"):
        load_multi30k("val", tmp_path, checksums=sums)


def test_each_file_is_hashed_once(tmp_path, monkeypatch):
    _place(tmp_path, FILES)
    calls = []
    real = download.sha256_file
    monkeypatch.setattr(download, "sha256_file", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        load_multi30k("train", tmp_path, checksums=SUMS)
    assert len(calls) == 2  # train.de.gz and train.en.gz, the first time only


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="test2016"):
        load_multi30k("test")


def test_cli_data_status_names_missing_files(tmp_path, capsys):
    _place(tmp_path, {"val.de.gz": b"not the file"})
    assert main(["data", "status", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "missing  train.de.gz" in out and "corrupt  val.de.gz" in out
    assert "tfx-course data download" in out


def test_cli_data_status_and_download_on_the_real_data(capsys, data_root):
    assert main(["data", "status", "--root", str(data_root)]) == 0
    assert main(["data", "download", "--root", str(data_root)]) == 0  # all there: no network
    assert "all files present and verified" in capsys.readouterr().out
