"""Turning a trained sequence-to-sequence model into output sequences: greedy and beam search.

Shapes: B batch, S source length, L generated length, V target vocabulary size, K beam size.

The model is a ``DecodableModel`` (the course's ``Transformer`` is one): ``encode(src (B, S))
-> memory``, ``decode(tgt (B, T), memory, src) -> logits (B, T, V)``, and for the KV cache
``start_cache(memory, src)`` and ``decode_step(tokens, cache) -> (logits, cache)``. With
``use_cache=True`` (the default) each step feeds only the newest token, and every layer reuses
the keys and values it computed before; with ``use_cache=False`` every step re-runs the decoder
on the whole prefix. Both give the same tokens (tested); the cache only saves time.

Beam search scores a hypothesis y by its log-probability divided by the GNMT length penalty
(Wu et al. 2016): ``score(y) = log p(y | x) / ((5 + |y|) / 6) ** alpha``, where |y| counts the
generated tokens including EOS. ``alpha = 0`` is the plain log-probability, which favours
short outputs; larger alpha favours longer ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from tfx_course.data.batching import pad_sequences
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, Tokenizer
from tfx_course.model import eval_mode
from tfx_course.validation import check_positive_int

__all__ = [
    "DecodableModel",
    "DecodingCache",
    "greedy_decode",
    "beam_step",
    "beam_search",
    "gnmt_length_penalty",
    "score_sequences",
    "translate",
]


class DecodingConfig(Protocol):
    """The two settings decoding reads from a model's config."""

    @property
    def max_len(self) -> int: ...  # the longest target the model's positions cover

    @property
    def pad_id(self) -> int: ...


class DecodingCache(Protocol):
    """What decoding does with a model's cache besides handing it back: follow the beams."""

    def reorder(self, index: Tensor, memory: bool = True) -> DecodingCache: ...


class DecodableModel(Protocol):
    """What ``greedy_decode``, ``beam_search``, ``score_sequences`` and ``translate`` need of a model.

    ``config`` gives the defaults of ``max_len`` and ``pad_id``; the source ids are moved to
    ``device``. ``start_cache`` and ``decode_step`` are called only with ``use_cache=True``: a
    model without a KV cache is decoded with ``use_cache=False``.
    """

    training: bool

    @property
    def config(self) -> DecodingConfig: ...

    @property
    def device(self) -> torch.device: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def __call__(self, src: Tensor, tgt: Tensor) -> Tensor: ...

    def encode(self, src: Tensor) -> Tensor: ...

    def decode(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor: ...

    def start_cache(self, memory: Tensor, src: Tensor) -> DecodingCache: ...

    def decode_step(self, tgt: Tensor, cache: Any) -> tuple[Tensor, DecodingCache]: ...


def _check_src(src: Tensor) -> None:
    if not isinstance(src, Tensor) or src.dim() != 2 or src.dtype != torch.long:
        got = f"{src.dtype} {tuple(src.shape)}" if isinstance(src, Tensor) else type(src).__name__
        raise ValueError(f"src must be a (B, S) LongTensor of token ids, got {got}")


def _decode_length(model: DecodableModel, max_len: int | None) -> int:
    """Return the number of tokens to generate at most: ``max_len`` or the model's limit."""
    limit = model.config.max_len
    max_len = limit if max_len is None else max_len
    if max_len < 1 or max_len > limit:
        raise ValueError(f"max_len={max_len} must lie between 1 and the model's max_len={limit}")
    return max_len


class _Stepper:
    """Give the next-token logits of growing prefixes, with or without the KV cache.

    Lives for one decoding call, so nothing is stored on the model. Call ``next_logits`` once
    per step, each time with the prefix one token longer.
    """

    def __init__(self, model: DecodableModel, src: Tensor, use_cache: bool) -> None:
        self.model, self.src = model, src.to(model.device)
        self.memory = model.encode(self.src)  # (B, S, C)
        self.cache = model.start_cache(self.memory, self.src) if use_cache else None

    def repeat_rows(self, k: int) -> None:
        """Repeat every sentence k times in a row (one copy per beam)."""
        index = torch.arange(self.src.shape[0], device=self.src.device).repeat_interleave(k)
        self.src, self.memory = self.src[index], self.memory[index]  # (B * k, S), (B * k, S, C)
        if self.cache is not None:
            self.cache = self.cache.reorder(index)

    def next_logits(self, tokens: Tensor) -> Tensor:
        """Return the logits (N, V) that follow each prefix in tokens (N, t)."""
        if self.cache is None:
            return self.model.decode(tokens, self.memory, self.src)[:, -1]  # (N, V)
        logits, self.cache = self.model.decode_step(tokens[:, -1:], self.cache)  # (N, 1, V)
        return logits[:, -1]  # (N, V)

    def reorder(self, index: Tensor) -> None:
        """Follow the beams: row i now continues row index[i] (of the same sentence)."""
        if self.cache is not None:
            self.cache = self.cache.reorder(index, memory=False)


@torch.no_grad()
def greedy_decode(
    model: DecodableModel,
    src: Tensor,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    max_len: int | None = None,
    pad_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Generate the most likely next token, one step at a time, for a whole batch at once.

    Stops when every sequence has produced ``eos_id`` or after ``max_len`` tokens (default:
    the model's ``config.max_len``). Runs in eval mode and restores the model's mode.
    ``use_cache=True`` decodes with the model's KV cache; False re-runs the decoder on the
    whole prefix at every step.

    Shapes:
        src: (B, S) padded source ids -> (B, L) generated ids with L <= max_len: no BOS, the
        EOS included, ``pad_id`` (default ``config.pad_id``) after it.
    """
    _check_src(src)
    max_len = _decode_length(model, max_len)
    pad_id = model.config.pad_id if pad_id is None else pad_id
    with eval_mode(model):
        stepper = _Stepper(model, src, use_cache)
        tokens = _greedy_loop(stepper, bos_id, eos_id, max_len, pad_id)
    return tokens[:, 1:]  # (B, L): drop BOS


def _greedy_loop(stepper: _Stepper, bos_id: int, eos_id: int, max_len: int, pad_id: int) -> Tensor:
    B, device = stepper.src.shape[0], stepper.src.device
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
    for _ in range(max_len):
        logits = stepper.next_logits(tokens)  # (B, V)
        # A finished row keeps getting padding, whatever the model predicts for it.
        next_token = logits.argmax(dim=-1).masked_fill(finished, pad_id)  # (B,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
        finished |= next_token == eos_id
        if bool(finished.all()):  # every row has its EOS: stop early
            break
    return tokens  # (B, 1 + L)


def gnmt_length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """Return the GNMT length penalty ((5 + length) / 6) ** alpha that divides a log-probability."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


def beam_step(scores: Tensor, log_probs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the k best one-token extensions of each sentence's hypotheses, highest first.

    Every hypothesis b of a sentence is extended by every token v with the score
    ``scores[b] + log_probs[b, v]``; the k best of those K * V candidates survive.

    Shapes: scores (B, K), log_probs (B, K, V) -> new scores, origin beam (which hypothesis
    was extended) and token: each (B, k).
    """
    B, K, V = log_probs.shape
    candidates = (scores[..., None] + log_probs).reshape(B, K * V)  # (B, K * V)
    new_scores, flat = candidates.topk(k, dim=1)  # (B, k), highest first
    return new_scores, flat // V, flat % V


@torch.no_grad()
def beam_search(
    model: DecodableModel,
    src: Tensor,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Keep the ``beam_size`` best prefixes of every sentence; return each sentence's best output.

    All sentences and their beams run as one batch of B * K rows. At each step every
    hypothesis is extended by every token and the K highest log-probabilities of each
    sentence survive; a finished hypothesis (it produced EOS) stays in the beam with its score.
    The output is the hypothesis with the best ``score_sequences`` score, log p / GNMT penalty
    with exponent ``length_penalty``. A sentence stops early once no unfinished hypothesis can
    beat its best finished one. ``beam_size=1`` is greedy decoding.

    Shapes:
        src: (B, S) padded source ids -> (B, L) ids as ``greedy_decode`` returns them.
    """
    _check_src(src)
    check_positive_int(beam_size=beam_size)
    if length_penalty < 0:
        raise ValueError(f"length_penalty={length_penalty} must be >= 0 (0: no penalty)")
    max_len = _decode_length(model, max_len)
    pad_id = model.config.pad_id if pad_id is None else pad_id
    with eval_mode(model):
        stepper = _Stepper(model, src, use_cache)
        stepper.repeat_rows(beam_size)
        ids = (bos_id, eos_id, pad_id)
        return _beam_loop(stepper, src.shape[0], beam_size, length_penalty, max_len, ids)


def _beam_loop(
    stepper: _Stepper, B: int, K: int, alpha: float, max_len: int, ids: tuple[int, int, int]
) -> Tensor:
    """Run beam search on a stepper whose rows are already the K copies of each of B sentences."""
    beams = _Beams(B, K, alpha, max_len, ids, stepper.src.device)
    for _ in range(max_len):
        index = beams.advance(stepper.next_logits(beams.tokens))
        if beams.all_done():
            break
        stepper.reorder(index)
    return beams.best()


class _Beams:
    """The state of a batched beam search: K hypotheses for each of B sentences.

    Shapes: tokens (B * K, 1 + t) with the K beams of a sentence in consecutive rows;
    scores, lengths, finished (B, K).
    """

    def __init__(
        self,
        B: int,
        K: int,
        alpha: float,
        max_len: int,
        ids: tuple[int, int, int],
        device: torch.device,
    ) -> None:
        self.B, self.K, self.alpha, self.max_len = B, K, alpha, max_len
        bos_id, self.eos_id, self.pad_id = ids  # BOS, EOS and padding
        self.tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)
        self.scores = torch.full((B, K), float("-inf"), device=device)  # (B, K) log p so far
        self.scores[:, 0] = 0.0  # one live copy per sentence at first, so beams do not repeat
        self.lengths = torch.zeros(B, K, dtype=torch.long, device=device)  # tokens incl. EOS
        self.finished = torch.zeros(B, K, dtype=torch.bool, device=device)
        self.first_row = torch.arange(B, device=device)[:, None] * K  # (B, 1)

    def advance(self, logits: Tensor) -> Tensor:
        """Extend every hypothesis by one token; return which row each new row came from."""
        B, K = self.B, self.K
        V = logits.shape[-1]
        if V < K:
            raise ValueError(f"beam_size={K} exceeds the vocabulary size {V}")
        log_probs = logits.float().log_softmax(dim=-1).view(B, K, V)  # (B, K, V)
        # A finished hypothesis can only be followed by padding, at no cost: it keeps its score.
        only_pad = torch.full((V,), float("-inf"), device=logits.device)
        only_pad[self.pad_id] = 0.0
        log_probs = torch.where(self.finished[..., None], only_pad, log_probs)
        self.scores, origin, token = beam_step(self.scores, log_probs, K)  # (B, K) each
        was_finished = self.finished.gather(1, origin)
        self.lengths = self.lengths.gather(1, origin) + (~was_finished).long()
        self.finished = was_finished | (token == self.eos_id)
        index = (self.first_row + origin).view(-1)  # (B * K,)
        self.tokens = torch.cat([self.tokens[index], token.view(-1, 1)], dim=1)  # (B * K, t + 1)
        self._stop_hopeless()
        return index

    def _stop_hopeless(self) -> None:
        """Finish a sentence once no unfinished hypothesis can beat its best finished one.

        Log-probabilities only fall as a hypothesis grows, and the penalty grows with length,
        so an unfinished hypothesis can reach at most score / penalty(max_len).
        """
        normalized = self.scores / gnmt_length_penalty(self.lengths, self.alpha)  # (B, K)
        best_done = normalized.masked_fill(~self.finished, float("-inf")).amax(dim=1)  # (B,)
        ceiling = self.scores / ((5.0 + self.max_len) / 6.0) ** self.alpha  # (B, K)
        best_open = ceiling.masked_fill(self.finished, float("-inf")).amax(dim=1)  # (B,)
        self.finished |= (best_done >= best_open)[:, None]

    def all_done(self) -> bool:
        return bool(self.finished.all())

    def best(self) -> Tensor:
        """Return each sentence's best hypothesis, without BOS, padded: (B, L)."""
        normalized = self.scores / gnmt_length_penalty(self.lengths, self.alpha)  # (B, K)
        pick = normalized.argmax(dim=1)  # (B,)
        rows = self.first_row[:, 0] + pick  # (B,)
        length = int(self.lengths.gather(1, pick[:, None]).max())
        return self.tokens[rows, 1 : 1 + length]  # (B, L)


@torch.no_grad()
def score_sequences(
    model: DecodableModel,
    src: Tensor,
    tokens: Tensor,
    length_penalty: float = 0.6,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> Tensor:
    """Return beam search's score of given outputs: log p(tokens | src) / GNMT penalty.

    Runs the full model once (no cache), so it checks any decoder independently. Each row
    counts its tokens up to and including its first EOS; what follows is ignored.

    Shapes: src (B, S), tokens (B, L) as the decoders return them (no BOS) -> scores (B,).
    """
    _check_src(src)
    B, L = tokens.shape
    with eval_mode(model):
        bos = torch.full((B, 1), bos_id, dtype=torch.long, device=tokens.device)
        logits = model(src, torch.cat([bos, tokens], dim=1)[:, :-1])  # (B, L, V)
    log_probs = logits.float().log_softmax(dim=-1).gather(2, tokens[..., None])[..., 0]  # (B, L)
    is_eos = (tokens == eos_id).long()
    counted = (is_eos.cumsum(dim=1) - is_eos) == 0  # (B, L): up to the first EOS
    total = log_probs.masked_fill(~counted, 0.0).sum(dim=1)  # (B,)
    return total / gnmt_length_penalty(counted.sum(dim=1), length_penalty)


def translate(
    model: DecodableModel,
    texts: Sequence[str],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    max_len: int | None = None,
    batch_size: int = 256,
    beam_size: int | None = None,
    length_penalty: float = 0.6,
    use_cache: bool = True,
) -> list[str]:
    """Encode ``texts``, decode them in batches (greedy, or beam search with ``beam_size``), return texts."""
    if isinstance(texts, str):
        raise TypeError("translate expects a list of strings; wrap one text as [text]")
    pad_id = model.config.pad_id
    bos_id, eos_id = tgt_tokenizer.bos_id, tgt_tokenizer.eos_id
    outputs: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        src = pad_sequences([src_tokenizer.encode(t, add_special=True) for t in chunk], pad_id)
        if beam_size is None:
            ids = greedy_decode(model, src, bos_id, eos_id, max_len, pad_id, use_cache)
        else:
            ids = beam_search(
                model, src, beam_size, length_penalty, max_len, bos_id, eos_id, pad_id, use_cache
            )
        outputs.extend(tgt_tokenizer.decode(row.tolist()) for row in ids.cpu())
    return outputs
