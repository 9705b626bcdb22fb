"""Scoring translations with sacreBLEU, the standard way to report BLEU.

BLEU compares n-grams (n = 1..4) of each output with its reference, over the whole corpus at
once. sacreBLEU fixes the tokenization (``13a``) and prints a signature that names every
setting, so two numbers are comparable only when their signatures match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["corpus_bleu"]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Return cased and lower-cased corpus BLEU of ``hypotheses`` against one reference each.

    Keys: ``bleu`` (cased, the number to report), ``signature`` (its sacreBLEU signature),
    ``bleu_lowercase`` and ``signature_lowercase``, ``n`` (sentences scored).
    """
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("corpus_bleu expects lists of sentences, not one string")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses for {len(references)} references")
    if len(references) == 0:
        raise ValueError("corpus_bleu needs at least one sentence")
    from sacrebleu.metrics import BLEU  # here: sacrebleu takes ~0.3 s to import

    hyps, refs = list(hypotheses), [list(references)]
    cased, lower = BLEU(), BLEU(lowercase=True)
    score, score_lower = cased.corpus_score(hyps, refs), lower.corpus_score(hyps, refs)
    return {
        "bleu": score.score,
        "signature": str(cased.get_signature()),
        "bleu_lowercase": score_lower.score,
        "signature_lowercase": str(lower.get_signature()),
        "n": len(hyps),
    }
