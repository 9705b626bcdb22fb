"""Tests for the character tokenizer, the synthetic tasks and batching."""

from __future__ import annotations

import datetime as dt
import json
import random
import re

import pytest
import torch

from tfx_course.data import batching, synthetic, tokenizers
from tfx_course.data.batching import Seq2SeqBatch, make_batch, make_batches, pad_sequences
from tfx_course.data.synthetic import DATE_FORMATS, TASKS, format_date, make_pairs, tokenizer_for
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharTokenizer

# ---------------------------------------------------------------- tokenizer


def test_special_ids_are_the_agreed_ones():
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    tok = CharTokenizer("ab")
    assert [tok.token(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)


def test_from_texts_collects_sorted_unique_characters():
    tok = CharTokenizer.from_texts(["cab", "bad", ""])
    assert tok.chars == ("a", "b", "c", "d")
    assert tok.vocab_size == 4 + 4 == len(tok)


def test_encode_wraps_in_bos_eos_and_maps_unknown_to_unk():
    tok = CharTokenizer("abc")
    assert tok.encode("cab") == [BOS_ID, 6, 4, 5, EOS_ID]
    assert tok.encode("cab", add_special=False) == [6, 4, 5]
    assert tok.encode("axb", add_special=False) == [4, UNK_ID, 5]


def test_decode_stops_at_eos_and_skips_specials():
    tok = CharTokenizer("abc")
    assert tok.decode([BOS_ID, 4, PAD_ID, 5, EOS_ID, 6, 6]) == "ab"
    assert tok.decode(torch.tensor([6, 5, 4])) == "cba"
    assert tok.decode(tok.encode("abcba")) == "abcba"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([99])


def test_tokenizer_rejects_bad_alphabets_and_inputs():
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(TypeError, match="list of strings"):
        CharTokenizer.from_texts("abc")
    with pytest.raises(TypeError, match="expects a str"):
        CharTokenizer("ab").encode(["a"])


def test_save_load_round_trip(tmp_path):
    tok = CharTokenizer.from_texts(["héllo wörld", "12/03"])
    path = tok.save(tmp_path / "sub" / "vocab.json")
    again = CharTokenizer.load(path)
    assert again == tok
    assert again.encode("wörld") == tok.encode("wörld")
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left behind
    (tmp_path / "other.json").write_text(json.dumps({"chars": ["a"]}))
    with pytest.raises(ValueError, match="not a CharTokenizer file"):
        CharTokenizer.load(tmp_path / "other.json")


# ---------------------------------------------------------------- synthetic tasks


@pytest.mark.parametrize("task", TASKS)
def test_pairs_are_reproducible_and_leave_global_random_alone(task):
    state = random.getstate()
    first = make_pairs(task, 50, seed=3)
    assert random.getstate() == state
    assert make_pairs(task, 50, seed=3) == first
    assert make_pairs(task, 50, seed=4) != first
    assert len(first) == 50 and all(isinstance(x, str) and isinstance(y, str) for x, y in first)


def test_string_tasks_follow_their_rule_and_lengths():
    for x, y in make_pairs("reversal", 200, seed=0, min_len=2, max_len=5):
        assert 2 <= len(x) <= 5 and x.islower() and x.isalpha()
        assert y == "".join(x[i] for i in range(len(x) - 1, -1, -1))
    assert all(x == y for x, y in make_pairs("copy", 50, seed=0))
    for x, y in make_pairs("sort", 200, seed=0):
        assert sorted(y) == list(y) and sorted(x) == sorted(y)
    lengths = {len(x) for x, _ in make_pairs("reversal", 500, seed=1)}
    assert lengths == set(range(3, 9))  # the default bounds, both ends reached


def test_make_pairs_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 'reverse'"):
        make_pairs("reverse", 5, seed=0)
    with pytest.raises(ValueError, match="no length setting"):
        make_pairs("dates", 5, seed=0, max_len=5)
    with pytest.raises(ValueError, match="min_len <= max_len"):
        make_pairs("copy", 5, seed=0, min_len=6, max_len=5)


def test_dates_from_the_brief():
    day = dt.date(1998, 3, 3)
    assert format_date(day, "ordinal of month year") == "3rd of March 1998"
    assert format_date(day, "dd/mm/yy") == "03/03/98"
    assert format_date(day, "month day, year") == "March 3, 1998"
    assert format_date(day, "yyyy.mm.dd") == "1998.03.03"
    with pytest.raises(ValueError, match="unknown date format"):
        format_date(day, "mm/dd/yyyy")


def test_ordinal_suffixes():
    expected = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th",
                21: "21st", 22: "22nd", 23: "23rd", 30: "30th", 31: "31st"}  # fmt: skip
    for day, text in expected.items():
        source = format_date(dt.date(2001, 1, day), "ordinal of month year")
        assert source == f"{text} of January 2001"


# An independent reader for every format, built on strptime (case-insensitive).
_PATTERNS = [
    "%d of %B %Y", "%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%d %b %Y", "%d %b %y", "%B %d %Y",
    "%A, %B %d, %Y", "%d/%m/%y", "%d/%m/%Y", "%d.%m.%Y", "%Y.%m.%d", "%Y/%m/%d", "%Y%m%d",
    "%Y-%m-%d",
]  # fmt: skip


def _readings(source: str) -> dict[str, dt.date]:
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", r"\1", source)
    found = {}
    for pattern in _PATTERNS:
        try:
            date = dt.datetime.strptime(text, pattern).date()
        except ValueError:
            continue
        if "%y" in pattern:  # the task's pivot: 50-99 -> 19xx, 00-49 -> 20xx
            yy = date.year % 100
            date = date.replace(year=(1900 if yy >= 50 else 2000) + yy)
        if "%A" in pattern and date.strftime("%A") != source.split(",")[0]:
            continue
        found[pattern] = date
    return found


def test_every_date_source_has_exactly_one_reading_equal_to_its_target():
    used = set()
    for source, target in make_pairs("dates", 1500, seed=7):
        readings = _readings(source)
        assert readings, f"no reading of {source!r}"
        assert set(readings.values()) == {dt.date.fromisoformat(target)}, source
        assert dt.date(1950, 1, 1) <= dt.date.fromisoformat(target) <= dt.date(2049, 12, 31)
        used.update(readings)
    assert used == set(_PATTERNS)  # every format was drawn
    assert len(DATE_FORMATS) >= 15


@pytest.mark.parametrize("task", TASKS)
def test_tokenizer_for_covers_every_character_of_the_task(task):
    tok = tokenizer_for(task)
    for source, target in make_pairs(task, 1000, seed=11):
        assert UNK_ID not in tok.encode(source) + tok.encode(target)
        assert tok.decode(tok.encode(source)) == source


# ---------------------------------------------------------------- batching


def test_pad_sequences_right_pads():
    out = pad_sequences([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert out.dtype == torch.long and out.shape == (3, 3)
    assert out.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert pad_sequences([[1]], pad_id=7).tolist() == [[1]]
    with pytest.raises(ValueError, match="no sequences"):
        pad_sequences([])


def test_make_batch_shifts_the_target_by_one():
    tok = CharTokenizer("abcd")
    pairs = [("abc", "cba"), ("d", "dd")]
    batch = make_batch(pairs, tok, tok)
    for row, (x, y) in enumerate(pairs):
        ids = tok.encode(y, add_special=False)
        n = len(ids) + 1
        assert batch.src[row, : len(x) + 2].tolist() == [BOS_ID, *tok.encode(x, False), EOS_ID]
        assert batch.tgt_in[row, :n].tolist() == [BOS_ID, *ids]
        assert batch.tgt_out[row, :n].tolist() == [*ids, EOS_ID]
        assert (batch.tgt_in[row, n:] == PAD_ID).all() and (batch.tgt_out[row, n:] == PAD_ID).all()
    assert batch.num_tokens() == 4 + 3 and len(batch) == 2


def test_make_batches_covers_every_pair_once_in_a_seeded_order():
    tok = tokenizer_for("reversal")
    pairs = make_pairs("reversal", 23, seed=0)
    batches = make_batches(pairs, tok, tok, batch_size=5, seed=1)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    sources = [tok.decode(row) for b in batches for row in b.src]
    assert sorted(sources) == sorted(x for x, _ in pairs) and sources != [x for x, _ in pairs]
    again = make_batches(pairs, tok, tok, batch_size=5, seed=1)
    assert all(torch.equal(a.src, b.src) for a, b in zip(batches, again, strict=True))
    ordered = make_batches(pairs, tok, tok, batch_size=5, shuffle=False)
    assert [tok.decode(row) for b in ordered for row in b.src] == [x for x, _ in pairs]
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(pairs, tok, tok, batch_size=0)


def test_seq2seq_batch_validates_and_moves():
    src = torch.ones(2, 3, dtype=torch.long)
    tgt = torch.ones(2, 4, dtype=torch.long)
    batch = Seq2SeqBatch(src, tgt, tgt)
    assert batch.to("cpu").src.device.type == "cpu"
    with pytest.raises(ValueError, match="same shape"):
        Seq2SeqBatch(src, tgt, tgt[:, :3])
    with pytest.raises(ValueError, match="LongTensor"):
        Seq2SeqBatch(src.float(), tgt, tgt)
    with pytest.raises(ValueError, match="rows"):
        Seq2SeqBatch(src[:1], tgt, tgt)


def test_modules_export_their_names():
    for module in (tokenizers, synthetic, batching):
        assert all(hasattr(module, name) for name in module.__all__)
