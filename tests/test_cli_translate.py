"""Tests for `tfx-course translate` on a tiny checkpoint folder (model.pt + tokenizer.json)."""

from __future__ import annotations

import io

import pytest
import torch

from tfx_course.cli import main
from tfx_course.data.subword import train_subword_tokenizer
from tfx_course.data.tokenizers import EOS_ID
from tfx_course.decoding import translate
from tfx_course.model import ModelConfig, Transformer
from tfx_course.pretrained import export_model, load_course_model
from tfx_course.repro import seed_everything

TEXTS = ["Ein Hund läuft.", "Zwei Männer spielen Schach im Park.", "A dog runs.", "Two men play."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("course")
    tokenizer = train_subword_tokenizer(TEXTS * 3, vocab_size=60, min_frequency=1)
    seed_everything(0)
    config = ModelConfig(tokenizer.vocab_size, tokenizer.vocab_size, d_model=16, n_heads=4,
                         n_encoder_layers=1, n_decoder_layers=1, d_ff=32, max_len=24,
                         tie_embeddings=True)  # fmt: skip
    model = Transformer(config)
    with torch.no_grad():
        model.lm_head.bias[EOS_ID] = -3.0  # outputs of several tokens, not an immediate EOS
    export_model(model, folder / "model.pt")
    tokenizer.save(folder / "tokenizer.json")
    return folder


def test_translate_command_prints_what_translate_returns(checkpoint, capsys):
    model, tokenizer = load_course_model(checkpoint)
    for extra, beam in (([], None), (["--beam", "3"], 3)):
        assert main(["translate", "--checkpoint", str(checkpoint), *extra, *TEXTS[:2]]) == 0
        expected = translate(model, TEXTS[:2], tokenizer, tokenizer, max_len=24, beam_size=beam)
        assert capsys.readouterr().out.splitlines() == expected
        assert all(expected)  # non-empty outputs, so a mix-up would show


def test_translate_command_reads_stdin_and_reports_problems(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Ein Hund läuft.\n\nA dog runs.\n"))
    assert main(["translate", "--checkpoint", str(checkpoint)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["translate", "--checkpoint", str(checkpoint.parent / "nowhere"), "x"]) == 1
    assert "model.pt, tokenizer.json not found" in capsys.readouterr().err
    long = " ".join(["Hund"] * 30)  # more subwords than the model's max_len=24
    assert main(["translate", "--checkpoint", str(checkpoint), long]) == 2
    assert "the model reads at most 24" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_translate_command_rejects_empty_text_instead_of_inventing_a_sentence(
    checkpoint, capsys, text
):
    assert main(["translate", "--checkpoint", str(checkpoint), "Ein Hund läuft.", text]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the good sentence: the whole call is refused
    assert "the text is empty: give a German sentence to translate" in captured.err
