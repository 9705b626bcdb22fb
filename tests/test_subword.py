"""Tests for the library-trained subword tokenizer in tfx_course.data.subword."""

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from tfx_course.data.batching import make_batch
from tfx_course.data.subword import SubwordTokenizer, train_subword_tokenizer
from tfx_course.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    CharTokenizer,
    Tokenizer,
)

_NOUNS = ["Mann", "Frau", "Hund", "Kind", "man", "woman", "dog", "child", "Männer", "Straße"]
_VERBS = ["läuft", "sitzt", "spielt", "runs", "sits", "plays"]
_PLACES = ["im Park", "auf der Straße", "in the park", "on the street", "am Strand"]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        article = rng.choice(["Ein", "Eine", "A", "The"])
        end = rng.choice([".", "!", "", " ."])
        out.append(
            f"{article} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} {rng.choice(_PLACES)}{end}"
        )
    out.append('Zwei (2) "junge" Hunde, 3.5 Jahre alt: ja?  Ja; nein - vielleicht...')
    return out


CORPUS = _corpus()


@pytest.fixture(scope="module")
def tok() -> SubwordTokenizer:
    return train_subword_tokenizer(CORPUS, vocab_size=200)


def test_special_tokens_sit_at_the_char_tokenizer_ids(tok):
    assert [tok.token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    assert CharTokenizer.from_texts(["ab"]).token(3) == tok.token(3)  # same convention
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == len(tok)
    # this small corpus runs out of pairs seen twice before 200; a smaller target is met exactly
    merges = json.loads(tok.to_json())["model"]["merges"]
    alphabet = set("".join(CORPUS).replace(" ", "▁")) | {"▁"}
    assert tok.vocab_size == len(SPECIAL_TOKENS) + len(alphabet) + len(merges) <= 200
    assert train_subword_tokenizer(CORPUS, vocab_size=100).vocab_size == 100


def test_encode_wraps_in_bos_eos_and_decode_gives_the_text_back(tok):
    for text in CORPUS[:50] + [CORPUS[-1], "Ein Hund  spielt am Strand !", "The man sits."]:
        ids = tok.encode(text)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert ids[1:-1] == tok.encode(text, add_special=False)
        assert all(i >= len(SPECIAL_TOKENS) for i in ids[1:-1])
        assert tok.decode(ids) == text
    assert tok.encode_batch(CORPUS[:20]) == [tok.encode(t) for t in CORPUS[:20]]


def test_merges_make_frequent_words_single_tokens(tok):
    # Metaspace marks the space before a word with "▁"; punctuation is split off.
    assert tok.tokens("Ein Mann läuft.") == ["▁Ein", "▁Mann", "▁läuft", "."]
    assert len(tok.encode("Ein Mann läuft.", add_special=False)) == 4
    chars = CharTokenizer.from_texts(CORPUS)
    assert len(tok.encode("Ein Mann läuft.")) * 2 < len(chars.encode("Ein Mann läuft."))


def test_decode_stops_at_eos_and_skips_specials(tok):
    ids = tok.encode("Ein Hund")
    tail = tok.encode("The dog", add_special=False)
    assert tok.decode([PAD_ID, *ids, *tail]) == "Ein Hund"  # stops at the first EOS
    assert tok.decode(ids[:-1] + [PAD_ID, PAD_ID]) == "Ein Hund"
    assert tok.decode(torch.tensor(ids)) == "Ein Hund"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([BOS_ID, tok.vocab_size])


def test_unknown_characters_become_unk(tok):
    ids = tok.encode("Ein Hund €", add_special=False)
    assert UNK_ID in ids
    assert tok.decode(ids) == "Ein Hund "  # the unknown character is lost, the rest is exact


def test_save_and_load_one_json_file(tok, tmp_path):
    path = tok.save(tmp_path / "sub" / "tokenizer.json")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]
    assert json.loads(path.read_text(encoding="utf-8"))["model"]["type"] == "BPE"
    loaded = SubwordTokenizer.load(path)
    assert loaded == tok
    assert loaded.encode(CORPUS[-1]) == tok.encode(CORPUS[-1])
    assert loaded.decode(tok.encode(CORPUS[-1])) == CORPUS[-1]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a tokenizer"):
        SubwordTokenizer.load(bad)


def test_training_is_deterministic_across_runs_and_processes(tok):
    again = train_subword_tokenizer(CORPUS, vocab_size=200)
    assert again.to_json() == tok.to_json()
    # A new process has new hash seeds; the tokenizer must still come out byte-identical.
    code = (
        "import hashlib, json, sys; "
        "from tfx_course.data.subword import train_subword_tokenizer; "
        "t = train_subword_tokenizer(json.load(sys.stdin), vocab_size=200); "
        "print(hashlib.sha256(t.to_json().encode()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(CORPUS),
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()[-1]
    assert out == hashlib.sha256(tok.to_json().encode()).hexdigest()


def test_works_with_make_batch(tok):
    batch = make_batch([("Ein Mann läuft.", "A man runs."), ("Ein Hund", "A dog")], tok, tok)
    assert batch.src.shape == (2, 6)  # BOS ▁Ein ▁Mann ▁läuft . EOS
    assert tok.decode(batch.tgt_out[0]) == "A man runs."
    assert tok.decode(batch.tgt_in[1]) == "A dog"


def test_bad_arguments_get_clear_errors(tok):
    with pytest.raises(TypeError, match="list of texts"):
        train_subword_tokenizer("Ein Mann", vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_subword_tokenizer(CORPUS, vocab_size=4)
    with pytest.raises(TypeError, match="str"):
        tok.encode(["Ein"])
