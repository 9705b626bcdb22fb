"""Turning a trained sequence-to-sequence model into output sequences.

Shapes: B batch, S source length, L generated length, V target vocabulary size.

The model needs ``encode(src (B, S)) -> memory`` and ``decode(tgt (B, T), memory, src) ->
logits (B, T, V)`` (the course's ``Transformer``). Greedy decoding re-runs the decoder on the
whole prefix at every step; the KV cache that avoids this comes in a later lesson.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tfx_course.data.batching import pad_sequences
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, Tokenizer

__all__ = ["greedy_decode", "translate"]


def _model_setting(model: nn.Module, name: str, given: int | None) -> int:
    if given is not None:
        return given
    value = getattr(getattr(model, "config", None), name, None)
    if value is None:
        raise ValueError(f"the model has no config.{name}; pass {name}= explicitly")
    return int(value)


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    src: Tensor,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    max_len: int | None = None,
    pad_id: int | None = None,
) -> Tensor:
    """Generate the most likely next token, one step at a time, for a whole batch at once.

    Stops when every sequence has produced ``eos_id`` or after ``max_len`` tokens (default:
    the model's ``config.max_len``). Runs in eval mode and restores the model's mode.

    Shapes:
        src: (B, S) padded source ids -> (B, L) generated ids with L <= max_len: no BOS, the
        EOS included, ``pad_id`` (default ``config.pad_id``) after it.
    """
    if src.dim() != 2 or src.dtype != torch.long:
        raise ValueError(
            f"src must be a (B, S) LongTensor of token ids, got {src.dtype} {tuple(src.shape)}"
        )
    max_len = _model_setting(model, "max_len", max_len)
    pad_id = _model_setting(model, "pad_id", pad_id)
    limit = getattr(getattr(model, "config", None), "max_len", None)
    if max_len < 1 or (limit is not None and max_len > limit):
        raise ValueError(f"max_len={max_len} must lie between 1 and the model's max_len={limit}")
    was_training = model.training
    model.eval()
    try:
        tokens = _greedy_loop(model, src.to(next(model.parameters()).device), bos_id, eos_id, max_len, pad_id)  # fmt: skip
    finally:
        model.train(was_training)
    return tokens[:, 1:]  # (B, L): drop BOS


def _greedy_loop(model: nn.Module, src: Tensor, bos_id: int, eos_id: int, max_len: int, pad_id: int) -> Tensor:  # fmt: skip
    B = src.shape[0]
    memory = model.encode(src)  # (B, S, C)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)  # (B,)
    for _ in range(max_len):
        logits = model.decode(tokens, memory, src)  # (B, t, V)
        # A finished row keeps getting padding, whatever the model predicts for it.
        next_token = logits[:, -1].argmax(dim=-1).masked_fill(finished, pad_id)  # (B,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
        finished |= next_token == eos_id
        if bool(finished.all()):  # every row has its EOS: stop early
            break
    return tokens  # (B, 1 + L)


def translate(
    model: nn.Module,
    texts: Sequence[str],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    max_len: int | None = None,
    batch_size: int = 256,
) -> list[str]:
    """Encode ``texts``, decode them greedily in batches and return the output texts."""
    if isinstance(texts, str):
        raise TypeError("translate expects a list of strings; wrap one text as [text]")
    pad_id = _model_setting(model, "pad_id", None)
    bos_id = getattr(tgt_tokenizer, "bos_id", BOS_ID)  # the course's tokenizers all use 1 and 2
    eos_id = getattr(tgt_tokenizer, "eos_id", EOS_ID)
    outputs: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        src = pad_sequences([src_tokenizer.encode(t, add_special=True) for t in chunk], pad_id)
        ids = greedy_decode(model, src, bos_id, eos_id, max_len=max_len, pad_id=pad_id)
        outputs.extend(tgt_tokenizer.decode(row.tolist()) for row in ids.cpu())
    return outputs
