"""Tests for tfx_course.evaluation: sacreBLEU scores and evaluate_translation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import pytest
import sacrebleu
import torch
from stand_in import PrefixDecoding
from torch import nn

from tfx_course.data.tokenizers import EOS_ID, PAD_ID, CharTokenizer
from tfx_course.evaluation import (
    clipped_ngram_matches,
    evaluate_translation,
    exact_match,
    score_bleu,
    translate_by_length,
)

HYPOTHESES = ["the cat sat on the mat", "a dog runs in the park today", "two men play chess"]
REFERENCES = ["the cat sat on a mat", "a dog runs in the big park", "two men are playing chess"]


def _bleu_by_hand(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU from its definition, for texts that 13a tokenization leaves as they are."""
    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            h_grams = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            r_grams = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum((h_grams & r_grams).values())  # clipped counts
            totals[n - 1] += sum(h_grams.values())
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = min(1.0, math.exp(1 - ref_len / hyp_len))
    return 100 * brevity * math.exp(log_precision)


def test_bleu_equals_the_definition_and_the_sacrebleu_command(tmp_path):
    result = score_bleu(HYPOTHESES, REFERENCES)
    assert result.score == pytest.approx(_bleu_by_hand(HYPOTHESES, REFERENCES), abs=1e-9)
    assert 0 < result.brevity_penalty < 1 and result.n_sentences == 3  # outputs are shorter
    (tmp_path / "hyp.txt").write_text("\n".join(HYPOTHESES) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(REFERENCES) + "\n")
    command = [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i",
               str(tmp_path / "hyp.txt"), "--format", "json", "-w", "6"]  # fmt: skip
    cli = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert result.score == pytest.approx(cli["score"], abs=1e-6)
    assert result.signature == cli["signature"]


def test_signature_names_the_protocol_and_perfect_output_scores_100():
    result = score_bleu(REFERENCES, REFERENCES)
    assert result.score == pytest.approx(100.0) and result.lowercase_score == pytest.approx(100.0)
    assert "case:mixed" in result.signature and "tok:13a" in result.signature
    assert "case:lc" in result.lowercase_signature
    shouted = score_bleu([r.upper() for r in REFERENCES], REFERENCES)
    assert shouted.score < 5 and shouted.lowercase_score == pytest.approx(100.0)
    assert str(shouted).startswith(f"BLEU {shouted.score:.2f} (lower-cased 100.00)")
    scores = score_bleu(HYPOTHESES, REFERENCES)
    assert scores.to_dict() == {
        "bleu": scores.score,
        "signature": scores.signature,
        "bleu_lowercase": scores.lowercase_score,
        "signature_lowercase": scores.lowercase_signature,
        "n": 3,
    }
    with pytest.raises(ValueError, match="got 1 hypotheses for 3 references"):
        score_bleu(HYPOTHESES[:1], REFERENCES)
    with pytest.raises(TypeError, match="score_bleu expects lists of sentences"):
        score_bleu("a b", "a b")
    with pytest.raises(ValueError, match="score_bleu needs at least one sentence"):
        score_bleu([], [])


@dataclass(frozen=True)
class LookupConfig:
    max_len: int = 40
    pad_id: int = PAD_ID


class Reverser(PrefixDecoding, nn.Module):
    """Outputs the source characters in reverse order, then EOS: a known 'translation'."""

    def __init__(self) -> None:
        super().__init__()
        self.config = LookupConfig()

    def encode(self, src):
        return torch.zeros(*src.shape, 1)

    def decode(self, tgt, memory, src):
        B, T = tgt.shape
        logits = torch.zeros(B, T, 64)
        for b in range(B):
            chars = [t for t in src[b].tolist() if t > 3]  # drop PAD, BOS, EOS, UNK
            answer = [*reversed(chars), EOS_ID] + [EOS_ID] * T
            for t in range(T):
                logits[b, t, answer[t]] = 10.0
        return logits


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_evaluate_translation_scores_outputs_in_the_order_of_the_pairs(method):
    sources = ["tac eht", "god a", "nam gib eno", "ti"]  # lengths differ, so sorting reorders
    references = ["the cat", "a dog", "one big man", "it is"]
    tokenizer = CharTokenizer.from_texts(sources)
    pairs = list(zip(sources, references, strict=True))
    result = evaluate_translation(Reverser(), tokenizer, pairs, method=method, beam_size=3, batch_size=2)  # fmt: skip
    assert result.hypotheses == [s[::-1] for s in sources]
    assert result.bleu == score_bleu(result.hypotheses, references) and result.bleu.score < 100
    assert result.method == ("greedy" if method == "greedy" else "beam 3")
    assert result.sources == sources and result.references == references and result.seconds > 0
    with pytest.raises(ValueError, match='method must be "greedy" or "beam"'):
        evaluate_translation(Reverser(), tokenizer, pairs, method="sample")


def test_exact_match():
    assert exact_match(["abc", "ab", "x"], ["abc", "ba", "x"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_translate_by_length_batches_similar_lengths_and_keeps_the_input_order():
    sources = ["tac eht", "god a", "nam gib eno", "ti", "ab"]
    tokenizer = CharTokenizer.from_texts(sources)
    model = Reverser()
    batches = []
    decode = model.decode

    def recording(tgt, memory, src):
        batches.append(tuple(sorted(int((row != PAD_ID).sum()) for row in src)))
        return decode(tgt, memory, src)

    model.decode = recording
    outputs = translate_by_length(model, sources, tokenizer, batch_size=2)
    assert outputs == [s[::-1] for s in sources]
    assert sorted(set(batches)) == [(4, 4), (7, 9), (13,)]  # source lengths, BOS and EOS included
    with pytest.raises(TypeError, match="list of strings"):
        translate_by_length(model, "ab", tokenizer)


def test_clipped_ngram_matches_sum_to_sacrebleus_corpus_statistics():
    hyps = ["a man is riding a horse .", "the the the the", "two dogs play in the snow ."]
    refs = ["a man rides a brown horse .", "the cat on the mat", "two dogs are playing in snow ."]
    stats = sacrebleu.metrics.BLEU(tokenize="none").corpus_score(hyps, [refs])
    for n in range(1, 5):
        matches = totals = 0
        for h, r in zip(hyps, refs, strict=True):
            m, t = clipped_ngram_matches(h.split(), r.split(), n)
            matches, totals = matches + m, totals + t
        assert (matches, totals) == (stats.counts[n - 1], stats.totals[n - 1])


# --- paired bootstrap ----------------------------------------------------------------------


def test_paired_bootstrap_tells_a_real_difference_from_none():
    from tfx_course.evaluation import paired_bootstrap

    refs = [f"a man number {i} walks a big dog in the park today" for i in range(60)]
    good = list(refs)
    bad = [f"a man number {i} walks" if i % 2 else r for i, r in enumerate(refs)]
    tests = paired_bootstrap(good, {"bad": bad, "same": list(good)}, refs, n_samples=200)
    assert tests["bad"].baseline == pytest.approx(score_bleu(good, refs).score)
    assert tests["bad"].system == pytest.approx(score_bleu(bad, refs).score)
    assert tests["bad"].change < -10 and tests["bad"].p_value < 0.05
    assert tests["same"].change == 0 and tests["same"].p_value == 1.0
    assert "bs:200" in tests["bad"].signature
    with pytest.raises(ValueError, match="bad: 2 outputs for 60 references"):
        paired_bootstrap(good, {"bad": bad[:2]}, refs)
