"""Translation with little data: tokenizers and batches for any sentence pairs, a run, its BLEU.

The Multi30k recipe (``translation.py``) trains one shared vocabulary on all of Multi30k. With
little data, the experiments of lesson 14 vary what the recipe fixes: the number of training
pairs, the vocabulary size, the model size and dropout, and whether a part of the course model
is reused (``transfer.py``), which brings its own English tokenizer. ``prepare_pairs`` builds
the tokenizers (one shared, or a given one per side) and the token-count batches for any
(source, target) pairs; ``train_and_score`` trains a model on them and scores greedy sacreBLEU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.bucketing import make_token_batches
from tfx_course.data.subword import SubwordTokenizer, train_subword_tokenizer
from tfx_course.evaluation import evaluate_translation
from tfx_course.model import Transformer
from tfx_course.training import History, TrainConfig, evaluate, fit

__all__ = ["PairData", "encode_pairs", "prepare_pairs", "train_and_score"]

Pair = tuple[str, str]


@dataclass
class PairData:
    """Tokenizers and batches of one experiment's training and validation pairs."""

    src_tokenizer: SubwordTokenizer
    tgt_tokenizer: SubwordTokenizer
    train_batches: list[Seq2SeqBatch]
    val_batches: list[Seq2SeqBatch]
    n_train_pairs: int  # pairs kept (those within max_len)


def encode_pairs(
    src_tokenizer: SubwordTokenizer,
    tgt_tokenizer: SubwordTokenizer,
    pairs: Sequence[Pair],
    max_len: int,
) -> list[tuple[list[int], list[int]]]:
    """Encode (source, target) texts, dropping pairs longer than the model's positions."""
    src = src_tokenizer.encode_batch([s for s, _ in pairs])
    tgt = tgt_tokenizer.encode_batch([t for _, t in pairs])
    # tgt_in and tgt_out drop one id each, so a target may be one longer than max_len.
    return [(s, t) for s, t in zip(src, tgt, strict=True) if len(s) <= max_len and len(t) <= max_len + 1]  # fmt: skip


def prepare_pairs(
    train: Sequence[Pair],
    val: Sequence[Pair],
    *,
    vocab_size: int | None = None,
    src_tokenizer: SubwordTokenizer | None = None,
    tgt_tokenizer: SubwordTokenizer | None = None,
    max_tokens: int = 1024,
    max_len: int = 128,
    seed: int = 0,
) -> PairData:
    """Return tokenizers and batches for ``train`` and ``val``.

    A side without a given tokenizer gets one trained on its training texts with ``vocab_size``
    ids; if neither side is given, one tokenizer is trained on both sides and shared.
    """
    if (src_tokenizer is None or tgt_tokenizer is None) and vocab_size is None:
        raise ValueError("give vocab_size to train the missing tokenizer(s)")
    if src_tokenizer is None and tgt_tokenizer is None:
        src_tokenizer = tgt_tokenizer = train_subword_tokenizer(
            [s for s, _ in train] + [t for _, t in train], vocab_size
        )
    src_tokenizer = src_tokenizer or train_subword_tokenizer([s for s, _ in train], vocab_size)
    tgt_tokenizer = tgt_tokenizer or train_subword_tokenizer([t for _, t in train], vocab_size)
    train_ids = encode_pairs(src_tokenizer, tgt_tokenizer, train, max_len)
    val_ids = encode_pairs(src_tokenizer, tgt_tokenizer, val, max_len)
    return PairData(
        src_tokenizer,
        tgt_tokenizer,
        make_token_batches(train_ids, max_tokens, seed=seed),
        make_token_batches(val_ids, 4 * max_tokens, shuffle=False),
        len(train_ids),
    )


def train_and_score(
    model: Transformer,
    data: PairData,
    config: TrainConfig,
    test: Sequence[Pair],
    *,
    decode_max_len: int = 60,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` and return its history, validation loss and test BLEU (greedy)."""
    history: History = fit(model, data.train_batches, config, data.val_batches, progress=progress)
    result = evaluate_translation(
        model, data.src_tokenizer, test, max_len=decode_max_len, batch_size=100,
        tgt_tokenizer=data.tgt_tokenizer,
    )  # fmt: skip
    return {
        "history": history,
        "val_loss": evaluate(model, data.val_batches)["loss"],
        "bleu": result.bleu.score,
        "signature": result.bleu.signature,
        "examples": list(zip(result.sources[:3], result.hypotheses[:3], strict=True)),
        "train_pairs": data.n_train_pairs,
        "parameters": model.num_parameters(),
    }
