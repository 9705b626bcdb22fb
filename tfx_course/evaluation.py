"""Scoring outputs: exact match, and BLEU with sacreBLEU, the standard way to report it.

BLEU compares n-grams (n = 1..4) of each output with its reference, over the whole corpus at
once. sacreBLEU fixes the tokenization (``13a``) and prints a signature that names every
setting, so two numbers are comparable only when their signatures match. The protocol here:
detokenized, cased model output against the raw references, default settings; lower-cased
BLEU is reported beside it for comparison with older tutorials that lower-case everything.

This module is the one BLEU path of the course: ``evaluate_translation`` translates (batching
sentences of similar token length) and ``score_bleu`` scores; validation during training,
the course checkpoint's test2016 scores and the GPU run all go through them.
``paired_bootstrap`` asks whether two systems' BLEU on the same sentences really differ.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from tfx_course.data.tokenizers import Tokenizer
from tfx_course.decoding import DecodableModel, translate

__all__ = [
    "BleuResult",
    "score_bleu",
    "PairedBootstrap",
    "paired_bootstrap",
    "TranslationEvaluation",
    "translate_by_length",
    "evaluate_translation",
    "clipped_ngram_matches",
    "exact_match",
]

# decoding.translate's signature: (model, texts, src_tokenizer, tgt_tokenizer, max_len,
# batch_size, beam_size, length_penalty, use_cache) -> texts. StaticDecoder.translate is another.
Translator = Callable[..., list[str]]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Return the fraction of predictions equal to their reference, character for character."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("exact_match needs at least one reference")
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def clipped_ngram_matches(hyp: Sequence[str], ref: Sequence[str], n: int) -> tuple[int, int]:
    """Return BLEU's (clipped matches, total) of the n-grams of tokenized ``hyp`` against ``ref``.

    Each hypothesis n-gram counts as a match at most as often as it occurs in the reference
    (Papineni et al., 2002, "modified n-gram precision"); total is the number of hypothesis
    n-grams. Summed over a corpus, these are the counts sacreBLEU divides.
    """
    grams = [Counter(tuple(t[i : i + n]) for i in range(len(t) - n + 1)) for t in (hyp, ref)]
    return sum((grams[0] & grams[1]).values()), sum(grams[0].values())


@dataclass(frozen=True)
class BleuResult:
    """Corpus BLEU as sacreBLEU computes it: cased (the number to report) and lower-cased."""

    score: float  # cased BLEU, 0-100
    lowercase_score: float  # the same after lower-casing outputs and references
    signature: str  # e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    lowercase_signature: str
    precisions: tuple[float, ...]  # cased 1- to 4-gram precisions, in percent
    brevity_penalty: float  # below 1 when the outputs are shorter than the references
    hypothesis_length: int  # tokens in all outputs (after 13a tokenization)
    reference_length: int
    n_sentences: int

    def __str__(self) -> str:
        return f"BLEU {self.score:.2f} (lower-cased {self.lowercase_score:.2f})  {self.signature}"

    def to_dict(self) -> dict[str, Any]:
        """Return the scores as JSON-ready keys: bleu, signature, bleu_lowercase, signature_lowercase, n."""
        return {
            "bleu": self.score,
            "signature": self.signature,
            "bleu_lowercase": self.lowercase_score,
            "signature_lowercase": self.lowercase_signature,
            "n": self.n_sentences,
        }


def score_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> BleuResult:
    """Return sacreBLEU's corpus BLEU of ``hypotheses`` against one reference each, cased and lower-cased."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("score_bleu expects lists of sentences, not one string")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses for {len(references)} references")
    if len(references) == 0:
        raise ValueError("score_bleu needs at least one sentence")
    from sacrebleu.metrics import BLEU  # here: sacrebleu takes ~0.3 s to import

    hyps, refs = list(hypotheses), [list(references)]
    cased, lower = BLEU(), BLEU(lowercase=True)
    score, score_lower = cased.corpus_score(hyps, refs), lower.corpus_score(hyps, refs)
    return BleuResult(
        score=score.score,
        lowercase_score=score_lower.score,
        signature=str(cased.get_signature()),
        lowercase_signature=str(lower.get_signature()),
        precisions=tuple(score.precisions),
        brevity_penalty=score.bp,
        hypothesis_length=score.sys_len,
        reference_length=score.ref_len,
        n_sentences=len(hyps),
    )


@dataclass(frozen=True)
class PairedBootstrap:
    """One system against a baseline on the same sentences: BLEU of both and the p-value."""

    baseline: float  # cased corpus BLEU of the baseline
    system: float  # cased corpus BLEU of the system
    p_value: float  # chance of a difference this large if the systems were equally good
    signature: str  # sacreBLEU's, with the number of resamples and the seed

    @property
    def change(self) -> float:
        """BLEU of the system minus BLEU of the baseline."""
        return self.system - self.baseline


def paired_bootstrap(
    baseline: Sequence[str],
    systems: Mapping[str, Sequence[str]],
    references: Sequence[str],
    n_samples: int = 1000,
) -> dict[str, PairedBootstrap]:
    """Compare each system's outputs with the baseline's by paired bootstrap resampling.

    sacreBLEU's test (Koehn, 2004): resample the sentences ``n_samples`` times (seed 12345 unless
    ``$SACREBLEU_SEED`` says otherwise), score both systems on each resample, and report how
    often the difference is as large as the real one. All outputs are in the order of
    ``references``. A system whose outputs equal the baseline's gets p = 1 (sacreBLEU's test
    would report its smallest p-value for a difference of exactly zero).
    """
    if isinstance(references, str) or not systems:
        raise ValueError("paired_bootstrap needs a list of references and at least one system")
    for name, hyps in {"baseline": baseline, **systems}.items():
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} outputs for {len(references)} references")
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    named = [("baseline", list(baseline)), *((name, list(h)) for name, h in systems.items())]
    test = PairedTest(named, {"BLEU": BLEU()}, [list(references)], "bs", n_samples)
    signatures, results = test()
    base, *rest = results["BLEU"]
    signature = str(signatures["BLEU"])
    return {
        name: PairedBootstrap(
            base.score, r.score, 1.0 if list(systems[name]) == named[0][1] else r.p_value, signature
        )
        for name, r in zip(systems, rest, strict=True)
    }


@dataclass(frozen=True)
class TranslationEvaluation:
    """What ``evaluate_translation`` measured, with every output for error analysis."""

    bleu: BleuResult
    method: str  # "greedy" or "beam 4"
    sources: list[str]
    references: list[str]
    hypotheses: list[str]  # in the order of the pairs
    seconds: float  # wall-clock decoding time (varies between machines and runs)


def translate_by_length(
    model: DecodableModel,
    texts: Sequence[str],
    tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer | None = None,
    *,
    beam_size: int | None = None,
    length_penalty: float = 0.6,
    batch_size: int = 64,
    max_len: int | None = None,
    use_cache: bool = True,
    progress: bool = False,
    translator: Translator = translate,
) -> list[str]:
    """Translate ``texts`` in batches of similar token length; return the outputs in input order.

    Sorting by the number of source tokens puts sentences of one length in one batch, so
    little of each batch is padding. Greedy, or beam search with ``beam_size`` beams and the
    GNMT ``length_penalty``; ``tgt_tokenizer`` defaults to ``tokenizer`` (a shared vocabulary).
    ``translator`` decodes each batch (``decoding.translate``, or e.g. a
    ``static_decoding.StaticDecoder``'s ``translate``).
    """
    if isinstance(texts, str):
        raise TypeError("translate_by_length expects a list of strings; wrap one text as [text]")
    tgt_tokenizer = tgt_tokenizer or tokenizer
    lengths = [len(tokenizer.encode(text, add_special=True)) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])  # stable: ties keep input order
    outputs = [""] * len(texts)
    desc = "greedy" if beam_size is None else f"beam {beam_size}"
    with tqdm(total=len(texts), desc=desc, unit="sentence", disable=not progress) as bar:
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            batch = [texts[i] for i in rows]
            args = (max_len, len(rows), beam_size, length_penalty, use_cache)
            for i, text in zip(rows, translator(model, batch, tokenizer, tgt_tokenizer, *args), strict=True):  # fmt: skip
                outputs[i] = text
            bar.update(len(rows))
    return outputs


def evaluate_translation(
    model: DecodableModel,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    method: str = "greedy",
    beam_size: int = 4,
    length_penalty: float = 0.6,
    batch_size: int = 64,
    max_len: int | None = None,
    progress: bool = False,
    tgt_tokenizer: Tokenizer | None = None,
    use_cache: bool = True,
    translator: Translator = translate,
) -> TranslationEvaluation:
    """Translate the source side of ``pairs`` and score it with sacreBLEU against the target side.

    ``method`` is "greedy" or "beam" (``beam_size`` beams, GNMT ``length_penalty``). Sentences
    are batched by length (``translate_by_length``) and returned in input order.
    ``tgt_tokenizer`` defaults to ``tokenizer`` (one shared vocabulary); ``max_len`` caps the
    generated tokens (default: the model's ``config.max_len``). ``translator`` decodes each
    batch (see ``translate_by_length``).
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f'method must be "greedy" or "beam", got {method!r}')
    if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str):
        raise TypeError("pairs must be a list of (source, reference) pairs; wrap one as [pair]")
    sources, references = [src for src, _ in pairs], [ref for _, ref in pairs]
    beams = beam_size if method == "beam" else None
    start = time.perf_counter()
    hypotheses = translate_by_length(
        model, sources, tokenizer, tgt_tokenizer, beam_size=beams, length_penalty=length_penalty,
        batch_size=batch_size, max_len=max_len, use_cache=use_cache, progress=progress,
        translator=translator,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    name = "greedy" if method == "greedy" else f"beam {beam_size}"
    bleu = score_bleu(hypotheses, references)
    return TranslationEvaluation(bleu, name, sources, references, hypotheses, seconds)
