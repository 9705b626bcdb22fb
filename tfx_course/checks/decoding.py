"""Checks for decoding (lessons 07 and 10): greedy decoding and sampling with a temperature,
the GNMT length penalty, one step of beam search and nucleus (top-p) filtering.

Shapes: B batch (sentences), S source length, L generated length, K hypotheses kept per
sentence (the beam), V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.checks.core import (
    NOT_ATTEMPTED,
    CheckResult,
    Fail,
    call,
    close,
    diagnose,
    expect_tensor,
    run_check,
)
from tfx_course.decoding import beam_step, gnmt_length_penalty, greedy_decode
from tfx_course.model import ModelConfig, Transformer
from tfx_course.validation import shape_str

__all__ = [
    "check_greedy_decode",
    "check_sample_decode",
    "check_length_penalty",
    "check_beam_step",
    "check_top_p_filter",
]


# --- greedy decoding ----------------------------------------------------------------

PAD, BOS, EOS, CONFUSED = 0, 1, 2, 3
VOCAB = 12


@dataclass(frozen=True)
class _ReversalConfig:
    max_len: int = 16
    pad_id: int = PAD


class _ReversalModel(nn.Module):
    """A perfect reversal "model": after BOS and a correct prefix it predicts the next token
    of the reversed source, then EOS. A wrong prefix gets CONFUSED; training mode garbles it.

    A ``DecodableModel`` without a KV cache: the library decodes it with ``use_cache=False``.
    """

    config = _ReversalConfig()
    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.calls_in_training = 0

    def encode(self, src: Tensor) -> Tensor:
        return F.one_hot(src, VOCAB).float()  # (B, S, V)

    def decode(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        B, T = tgt.shape
        logits = torch.zeros(B, T, VOCAB)
        for b in range(B):
            content = src[b][src[b] > CONFUSED].flip(0).tolist() + [EOS]
            for t in range(T):
                previous = BOS if t == 0 else content[min(t, len(content)) - 1]
                wanted = content[min(t, len(content) - 1)] if tgt[b, t] == previous else CONFUSED
                logits[b, t, wanted] = 5.0
        if self.training:
            self.calls_in_training += 1
            logits = logits.roll(1, dims=-1)  # what dropout might do: a different argmax
        return logits  # (B, T, V)


@torch.no_grad()
def _greedy_variant(model: nn.Module, src: Tensor, max_len: int, bug: str) -> Tensor:
    """Greedy decoding with one common mistake planted (``bug``), as in ``_GREEDY_BUGS``."""
    memory = model.encode(src)
    tokens = torch.full((src.shape[0], 1), BOS)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len - 1 if bug == "one_short" else max_len):
        prefix = tokens[:, -1:] if bug == "newest_only" else tokens
        logits = model.decode(prefix, memory, src)  # (B, t, V)
        nxt = logits[:, 0 if bug == "first_position" else -1].argmax(-1)  # (B,)
        if bug != "no_pad":
            nxt = nxt.masked_fill(finished, PAD)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        finished |= nxt == EOS
        if bool(finished.any() if bug == "any_stop" else finished.all()):
            break
    return tokens if bug == "with_bos" else tokens[:, 1:]


_GREEDY_BUGS = {
    "with_bos": "the output starts with BOS: return the generated tokens only (drop column 0)",
    "first_position": "the next token must come from the last position's logits, logits[:, -1]; "
    "you used the first position",
    "no_pad": "after a sequence has produced EOS, fill its later positions with pad_id",
    "newest_only": "the decoder saw only the newest token: pass the whole prefix so far "
    "(BOS and every token chosen), model.decode(tokens, memory, src)",
    "one_short": "one token short of max_len: max_len counts the generated tokens, BOS not "
    "included, so run max_len steps",
    # After one_short: with max_len=3 both stop after two tokens; max_len=8 tells them apart.
    "any_stop": "you stopped when the first sequence finished; stop when every sequence has "
    "produced EOS (finished.all())",
}


def _name_greedy_bug(got: Tensor, model: nn.Module, src: Tensor, max_len: int) -> None:
    """Raise ``Fail`` naming the planted mistake whose output equals ``got``, if any."""
    for bug, message in _GREEDY_BUGS.items():
        if torch.equal(_trim(got), _trim(_greedy_variant(model, src, max_len, bug))):
            raise Fail(message)


def _trim(tokens: Tensor) -> Tensor:
    """Drop trailing columns that hold only padding (running on to max_len is allowed)."""
    while tokens.shape[1] > 0 and bool((tokens[:, -1] == PAD).all()):
        tokens = tokens[:, :-1]
    return tokens


# Arguments after the greedy decoder's, as (how the message shows it, value): sampling adds
# the temperature and the generator.
Extra = tuple[tuple[str, Any], ...]


def _decode_with(fn, model: nn.Module, src: Tensor, max_len: int, timeout: float | None, extra: Extra = ()) -> Tensor:  # fmt: skip
    name = "sample_decode" if extra else "greedy_decode"
    shown = "".join(f", {label}" for label, _ in extra)
    what = f"{name}(model, src, bos_id={BOS}, eos_id={EOS}, max_len={max_len}, pad_id={PAD}{shown})"
    values = [value for _, value in extra]
    with torch.no_grad():
        got = call(what, fn, model, src.clone(), BOS, EOS, max_len, PAD, *values, timeout=timeout)
    if not isinstance(got, Tensor):
        raise Fail(f"{what} returned {type(got).__name__}; return a (B, L) tensor of token ids")
    if got.dtype.is_floating_point or got.dtype == torch.bool:
        raise Fail(
            f"the output has dtype {got.dtype}; token ids are integers (argmax gives torch.long)"
        )
    if got.dim() != 2 or got.shape[0] != src.shape[0]:
        raise Fail(f"the output has shape {shape_str(got)}; expected (B, L) = ({src.shape[0]}, L)")
    if got.shape[1] > max_len + 1 or (
        got.shape[1] == max_len + 1 and not bool((got[:, 0] == BOS).all())
    ):
        raise Fail(
            f"the output has {got.shape[1]} tokens per sequence; stop after max_len={max_len}"
        )
    return got.long()


_REVERSAL_SOURCES = [
    [BOS, 4, 5, 6, 7, EOS],
    [BOS, 8, 9, EOS, PAD, PAD],
    [BOS, 10, EOS, PAD, PAD, PAD],
]


def _reversal_case(fn: Callable[..., Any], max_len: int, timeout: float | None, extra: Extra = ()) -> None:  # fmt: skip
    """Decode the perfect reversal model; max_len=3 cuts the longest answer (5 tokens) short."""
    model, src = _ReversalModel(), torch.tensor(_REVERSAL_SOURCES)
    model.train()  # the learner's code must switch to eval mode itself
    got = _decode_with(fn, model, src, max_len, timeout, extra)
    model.eval()
    expected = greedy_decode(model, src, BOS, EOS, max_len, PAD, use_cache=False)
    if torch.equal(_trim(got), _trim(expected)):
        return
    if model.calls_in_training:
        raise Fail("the model ran in training mode (dropout on): call model.eval() before decoding")
    _name_greedy_bug(got, model, src, max_len)
    raise Fail(
        f"for reversal with max_len={max_len}, decoded {got.tolist()}, expected {expected.tolist()}"
    )


def _transformer_case(fn: Callable[..., Any], timeout: float | None, extra: Extra = ()) -> None:
    """Decode a small random Transformer, whose rows end at different steps."""
    torch.manual_seed(0)
    config = ModelConfig(VOCAB, VOCAB, d_model=16, n_heads=4, n_encoder_layers=1,
                         n_decoder_layers=1, d_ff=32, dropout=0.1, max_len=8)  # fmt: skip
    transformer, src = Transformer(config).eval(), torch.tensor(_REVERSAL_SOURCES)
    got = _decode_with(fn, transformer, src, 5, timeout, extra)
    expected = greedy_decode(transformer, src, BOS, EOS, max_len=5, pad_id=PAD)
    if not torch.equal(_trim(got), _trim(expected)):
        _name_greedy_bug(got, transformer, src, 5)
        raise Fail(
            f"with a small Transformer and max_len=5, decoded {got.tolist()}, expected {expected.tolist()}"
        )


def _greedy_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for max_len in (8, 3):
        _reversal_case(fn, max_len, timeout)
    _transformer_case(fn, timeout)
    return "eval mode, last-position argmax, pad after EOS, stop when all finish or at max_len"


def check_greedy_decode(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(model, src, bos_id, eos_id, max_len, pad_id) -> (B, L)`` generated ids."""
    return run_check("greedy_decode", lambda: _greedy_steps(fn, timeout))


# --- sampling with a temperature (transfer) -------------------------------------------

# The stand-in model's logits: the first token comes from _FIRST, every later one from _LATER
# (the rest of the vocabulary at -30, never drawn). Temperatures 0.5 and 2 tell "divided by T"
# from "multiplied by T" and from "T ignored".
_FIRST = {4: 1.0, 5: 0.5, 6: 0.0, 7: -0.5, EOS: -1.0}
_LATER = {8: 1.5, 9: 0.0, EOS: 0.5}
_DRAWS, _TOLERANCE = 4000, 0.035  # the largest allowed gap between a frequency and its probability


def _logits_of(scores: dict[int, float]) -> Tensor:
    logits = torch.full((VOCAB,), -30.0)
    logits[list(scores)] = torch.tensor(list(scores.values()))
    return logits  # (V,)


class _DiceModel(nn.Module):
    """A "model" whose next-token logits are fixed: ``_FIRST`` at position 0, ``_LATER`` after."""

    config = _ReversalConfig()
    device = torch.device("cpu")

    def encode(self, src: Tensor) -> Tensor:
        return torch.zeros(src.shape[0], src.shape[1], 1)  # (B, S, 1)

    def decode(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        B, T = tgt.shape
        logits = _logits_of(_LATER).expand(B, T, VOCAB).clone()  # (B, T, V)
        logits[:, 0] = _logits_of(_FIRST)
        return logits


def _sampling_mistakes(temperature: float) -> dict[str, tuple[Tensor, Tensor]]:
    """Map each mistake's message to the (first, later) token distributions it draws from."""
    first, later = _logits_of(_FIRST), _logits_of(_LATER)
    correct_first = (first / temperature).softmax(-1)
    return {
        "the temperature is ignored: divide the logits by it before the softmax, "
        "softmax(logits / temperature)": (first.softmax(-1), later.softmax(-1)),
        "the logits were multiplied by the temperature; divide them by it, "
        "softmax(logits / temperature)": (
            (first * temperature).softmax(-1),
            (later * temperature).softmax(-1),
        ),  # fmt: skip
        "the later tokens were drawn from the first position's logits: sample from the last "
        "position's, logits[:, -1]": (correct_first, correct_first),
        "every token was equally likely: take the softmax over the vocabulary, dim=-1 (over the "
        "batch axis it gives every row the same flat distribution)": (
            torch.full((VOCAB,), 1 / VOCAB),
        )
        * 2,  # fmt: skip
    }


def _frequencies(tokens: Tensor) -> Tensor:
    return torch.bincount(tokens, minlength=VOCAB).double() / max(1, tokens.numel())  # (V,)


def _near(freq: Tensor, probs: Tensor) -> bool:
    return bool((freq - probs.double()).abs().max() <= _TOLERANCE)


def _draws(fn: Callable[..., Any], temperature: float, seed: int, rows: int, timeout: float | None) -> Tensor:  # fmt: skip
    """Sample ``rows`` sequences of at most two tokens from the stand-in model."""
    src = torch.full((rows, 3), 4)  # the stand-in ignores its source
    generator = torch.Generator().manual_seed(seed)
    extra = ((f"temperature={temperature}", temperature), (f"generator seeded {seed}", generator))
    got = _decode_with(fn, _DiceModel(), src, 2, timeout, extra)
    first = got[:, 0] if got.shape[1] else got.new_zeros(0)
    if got.shape[1] < 2 and bool((first != EOS).any()):
        raise Fail(
            "with max_len=2, every sequence whose first token is not EOS needs a second token"
        )
    if bool((got[first == EOS, 1:] != PAD).any()):
        raise Fail(_GREEDY_BUGS["no_pad"])
    return got


def _sampling_case(fn: Callable[..., Any], temperature: float, timeout: float | None) -> None:
    got = _draws(fn, temperature, seed=0, rows=_DRAWS, timeout=timeout)
    first = got[:, 0]
    if bool((first == first[0]).all()):
        raise Fail(f"at temperature={temperature} every sequence got the same first token: draw "
                   "one token per row from softmax(logits / temperature), "
                   "torch.multinomial(probs, 1, generator=generator) on probabilities of shape "
                   "(B, V); the argmax would be greedy decoding")  # fmt: skip
    observed = (_frequencies(first), _frequencies(got[first != EOS, 1]))
    expected = tuple((_logits_of(s) / temperature).softmax(-1) for s in (_FIRST, _LATER))
    if all(_near(o, e) for o, e in zip(observed, expected, strict=True)):
        return
    for message, probs in _sampling_mistakes(temperature).items():
        if all(_near(o, q) for o, q in zip(observed, probs, strict=True)):
            raise Fail(message)
    i = 0 if not _near(observed[0], expected[0]) else 1
    gap = float((observed[i] - expected[i]).abs().max())
    raise Fail(f"at temperature={temperature} the frequencies of the {('first', 'second')[i]} "
               f"tokens over {_DRAWS} draws differ from softmax(logits / temperature) by up to "
               f"{gap:.3f} (at most {_TOLERANCE} is expected)")  # fmt: skip


def _greedy_at_zero(fn: Callable[..., Any], timeout: float | None) -> None:
    extra = (("temperature=0.0", 0.0), ("generator", torch.Generator().manual_seed(0)))
    try:
        for max_len in (8, 3):
            _reversal_case(fn, max_len, timeout, extra)
        _transformer_case(fn, timeout, extra)
    except Fail as failure:
        if str(failure).startswith(NOT_ATTEMPTED):
            raise
        raise Fail(f"temperature=0 means greedy decoding (the argmax, no division by 0): {failure}") from None  # fmt: skip


def _sampling_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _greedy_at_zero(fn, timeout)
    runs = []
    for global_seed in (1, 2):  # the global random state differs, the generator's seed does not
        torch.manual_seed(global_seed)
        runs.append(_draws(fn, 1.0, seed=7, rows=64, timeout=timeout))
    if not torch.equal(runs[0], runs[1]):
        raise Fail("two runs whose generators had the same seed gave different tokens: draw with "
                   "the generator argument, torch.multinomial(probs, 1, generator=generator), "
                   "not with the global random state")  # fmt: skip
    for temperature in (0.5, 2.0):
        _sampling_case(fn, temperature, timeout)
    return (
        f"temperature 0 is greedy decoding; at temperatures 0.5 and 2 the tokens of {_DRAWS:,} "
        "draws follow softmax(logits / temperature); the same seed gives the same tokens"
    )


def check_sample_decode(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(model, src, bos_id, eos_id, max_len, pad_id, temperature, generator)``.

    It must return ``(B, L)`` ids drawn from ``softmax(logits / temperature)`` with
    ``generator``, greedy decoding at ``temperature=0``, padded after EOS like greedy decoding.
    """
    return run_check("sample_decode", lambda: _sampling_steps(fn, timeout))


# --- the GNMT length penalty --------------------------------------------------------


def _penalty_mistakes(log_probs: Tensor, lengths: Tensor, alpha: float) -> dict[str, Callable[[], Tensor]]:  # fmt: skip
    L = lengths.double()
    return {
        "multiplied by the penalty: divide the log-probability by it": lambda: (
            log_probs * ((5 + L) / 6) ** alpha
        ),
        "the penalty is ((5 + |y|) / 6) ** alpha: you left out the 5": lambda: (
            log_probs / (L / 6) ** alpha
        ),
        "|y| ** alpha is plain length normalization; GNMT divides by "
        "((5 + |y|) / 6) ** alpha": lambda: log_probs / L**alpha,
        "alpha is ignored: raise (5 + |y|) / 6 to the power alpha": lambda: (
            log_probs / ((5 + L) / 6)
        ),
        "integer division: (5 + |y|) // 6 rounds down; divide as floats": lambda: (
            log_probs / torch.div(5 + lengths, 6, rounding_mode="floor").double() ** alpha
        ),
    }


def _penalty_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    log_probs = torch.tensor([-1.5, -4.0, -7.25, -12.0, -0.5])  # (N,)
    lengths = torch.tensor([1, 4, 9, 20, 2])  # (N,) tokens, EOS included
    for alpha in (0.6, 1.0, 0.0):
        what = f"normalized_score(log_probs, lengths, alpha={alpha})"
        got = call(what, fn, log_probs.clone(), lengths.clone(), alpha, timeout=timeout)
        got = expect_tensor(got, what, shape=log_probs.shape)
        if not got.dtype.is_floating_point:
            raise Fail(f"{what} has dtype {got.dtype}; scores are floats")
        expected = log_probs / gnmt_length_penalty(lengths, alpha)
        if close(got, expected):
            continue
        diagnose(got, _penalty_mistakes(log_probs, lengths, alpha))
        i = int((got.double() - expected.double()).abs().argmax())
        raise Fail(f"{what}: for log p = {log_probs[i].item()} and |y| = {lengths[i].item()} you "
                   f"return {got[i].item():.5f}, expected {expected[i].item():.5f}")  # fmt: skip
    return "log p / ((5 + |y|) / 6) ** alpha for alpha 0.6, 1 and 0 (no penalty)"


def check_length_penalty(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(log_probs, lengths, alpha) -> scores``, log p divided by the GNMT penalty."""
    return run_check("length_penalty", lambda: _penalty_steps(fn, timeout))


# --- one step of beam search --------------------------------------------------------


def _beam_inputs(gen: torch.Generator, B: int, K: int, V: int) -> tuple[Tensor, Tensor]:
    # Running scores far apart, so that ignoring them changes which candidates win.
    scores = -(torch.rand(B, K, generator=gen) * 6).sort(dim=1).values  # (B, K)
    log_probs = torch.randn(B, K, V, generator=gen).mul(2).log_softmax(dim=-1)  # (B, K, V)
    return scores, log_probs


def _beam_bug_outputs(scores: Tensor, log_probs: Tensor, k: int) -> dict[str, Tensor]:
    B, K, V = log_probs.shape

    def flat(t: Tensor) -> Tensor:
        return t.reshape(B, K * V)  # (B, K * V): one row per sentence

    return {
        "add each hypothesis's running score to its next-token log-probabilities before "
        "choosing: scores[..., None] + log_probs": flat(log_probs).topk(k, dim=1).values,
        "choose the k best of all K * V candidates of a sentence, not the best token of each "
        "beam": (scores + log_probs.amax(dim=-1)).sort(dim=1, descending=True).values[:, :k],
        "kept the lowest scores: keep the k highest (topk's default, largest=True)": flat(
            scores[..., None] + log_probs
        )
        .topk(k, dim=1, largest=False)
        .values,
        "candidates of different sentences were mixed: flatten to (B, K * V), one row per "
        "sentence, and choose within each row": (scores[..., None] + log_probs)
        .reshape(-1)
        .topk(B * k)
        .values.reshape(B, k),
    }


def _beam_case(
    fn: Callable[..., Any], B: int, K: int, V: int, k: int, seed: int, timeout: float | None
) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores, log_probs = _beam_inputs(gen, B, K, V)
    what = f"beam_step(scores {shape_str(scores)}, log_probs {shape_str(log_probs)}, k={k})"
    result = call(what, fn, scores.clone(), log_probs.clone(), k, timeout=timeout)
    if not (isinstance(result, tuple | list) and len(result) == 3):
        raise Fail(f"{what} should return three tensors (new_scores, origin, token), got "
                   f"{type(result).__name__}")  # fmt: skip
    got_scores = expect_tensor(result[0], f"{what}: new_scores", shape=(B, k))
    origin, token = result[1], result[2]
    for name, t in (("origin", origin), ("token", token)):
        expect_tensor(t, f"{what}: {name}", shape=(B, k))
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise Fail(f"{what}: {name} has dtype {t.dtype}; indices are integers (torch.long)")
    if not (origin.min() >= 0 and origin.max() < K and token.min() >= 0 and token.max() < V):
        raise Fail(f"{what}: origin must lie in 0..{K - 1} and token in 0..{V - 1}: decode the "
                   "flat index as origin = index // V, token = index % V")  # fmt: skip
    rows = torch.arange(B)[:, None]
    implied = scores.gather(1, origin.long()) + log_probs[rows, origin.long(), token.long()]
    expected, _, _ = beam_step(scores, log_probs, k)  # the library's beam search step
    ranked = got_scores.sort(dim=1, descending=True).values  # any order of the k is fine
    if close(ranked, expected) and close(got_scores, implied):
        return
    for message, wrong in _beam_bug_outputs(scores, log_probs, k).items():
        if close(ranked, wrong.sort(dim=1, descending=True).values):
            raise Fail(message)
    if not close(got_scores, implied):
        raise Fail(f"{what}: new_scores are not scores[origin] + log_probs[origin, token] for "
                   "the origin and token you return: decode the flat index as origin = index "
                   "// V, token = index % V")  # fmt: skip
    raise Fail(f"{what}: the k kept scores of sentence 0 are {ranked[0].tolist()}, expected "
               f"{[round(x, 4) for x in expected[0].tolist()]}")  # fmt: skip


def _beam_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    _beam_case(fn, B=3, K=4, V=9, k=4, seed=10, timeout=timeout)
    _beam_case(fn, B=2, K=3, V=6, k=2, seed=11, timeout=timeout)
    _beam_case(fn, B=1, K=1, V=5, k=3, seed=12, timeout=timeout)  # the first step: one live beam
    return "keeps the k best of scores + log_probs over all K * V candidates of each sentence"


def check_beam_step(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(scores, log_probs, k) -> (new_scores, origin, token)``, one step of beam search."""
    return run_check("beam_step", lambda: _beam_steps(fn, timeout))


# --- nucleus (top-p) filtering (transfer) ---------------------------------------------------


def _top_p_variant(logits: Tensor, p: float, bug: str = "") -> Tensor:
    """Top-p probabilities computed by sorting, or the same with one planted mistake."""
    probs = logits.softmax(dim=0 if bug == "batch_axis" else -1)  # (..., V)
    sorted_probs, order = probs.sort(dim=-1, descending=bug != "ascending")
    before = sorted_probs.cumsum(-1) - sorted_probs  # (..., V): mass of the tokens ahead
    keep = {"exclusive": sorted_probs.cumsum(-1) <= p, "threshold": sorted_probs >= p}.get(bug, before < p)  # fmt: skip
    keep[..., 0] = True  # the most likely token always stays
    kept = sorted_probs * keep
    if bug != "not_renormalised":
        kept = kept / kept.sum(-1, keepdim=True)
    return kept if bug == "sorted_order" else torch.zeros_like(kept).scatter(-1, order, kept)


_TOP_P_BUGS = {
    "exclusive": "the kept tokens must reach p: keep the token whose probability takes the "
    "total to p or above (keep a token while the mass before it is below p)",
    "not_renormalised": "renormalise: divide the kept probabilities by their sum, so that each "
    "row sums to 1",
    "threshold": "top-p keeps the most likely tokens until their total reaches p, not every "
    "token whose own probability is at least p",
    "ascending": "sort in descending order: the nucleus holds the most likely tokens",
    "sorted_order": "the probabilities come out in sorted order: scatter them back to their "
    "tokens with the sort's indices, torch.zeros_like(probs).scatter(-1, order, kept)",
    "batch_axis": "take the softmax over the vocabulary, the last axis, dim=-1",
}


def _nucleus_problem(got: Tensor, probs: Tensor, p: float) -> str | None:
    """Say which property of a top-p distribution ``got`` lacks, row by row; None if none."""
    for row, (g, q) in enumerate(zip(got.reshape(-1, got.shape[-1]).double(), probs.reshape(-1, probs.shape[-1]).double(), strict=True)):  # fmt: skip
        kept = g > 0
        mass = float(q[kept].sum())
        if not kept.any():
            return f"row {row} keeps no token: always keep the most likely one"
        if (~kept).any() and float(q[~kept].max()) > float(q[kept].min()) + 1e-7:
            return f"in row {row} a dropped token is more likely than a kept one: keep the most likely tokens"  # fmt: skip
        if mass < p - 1e-6:
            return f"row {row} keeps a total probability of {mass:.4f}, below p={p}"
        if mass - float(q[kept].min()) >= p + 1e-6:
            return f"row {row} keeps more tokens than needed: without its least likely kept token the total is still at least p={p}"  # fmt: skip
        if not torch.allclose(g, q * kept / mass, atol=1e-6):
            return f"row {row} is not the kept probabilities divided by their sum, {mass:.4f}"
    return None


def _top_p_cases() -> list[tuple[Tensor, float]]:
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(3, 8, generator=gen) * 1.5  # (B, V)
    tied = torch.tensor([[2.0, 0.0, 2.0, 2.0, 0.0, 2.0]])  # four equal tokens share the top
    return [
        (logits + torch.tensor([4.0] + [0.0] * 7), 0.05),  # the top token alone exceeds p
        (logits, 0.9),
        (logits, 0.5),
        (logits, 1.0),  # everything stays
        (tied, 0.5),  # any three of the four tied tokens are right
        (torch.randn(2, 3, 6, generator=gen) * 1.5, 0.8),  # (B, T, V): any leading axes
    ]


def _top_p_case(fn: Callable[..., Any], logits: Tensor, p: float, timeout: float | None) -> None:
    what = f"top_p_filter(logits {shape_str(logits)}, p={p})"
    got = call(what, fn, logits.clone(), p, timeout=timeout)
    got = expect_tensor(got, what, shape=logits.shape, finite=False)
    if bool(torch.isneginf(got).any()):
        raise Fail(f"{what} holds -inf: return probabilities (0 outside the nucleus, "
                   "renormalised), not filtered logits")  # fmt: skip
    if bool(torch.isnan(got).any()):
        raise Fail(f"{what} holds NaN: always keep the most likely token; when it alone exceeds "
                   "p it is the whole nucleus (renormalising nothing gives 0 / 0)")  # fmt: skip
    problem = _nucleus_problem(got, logits.softmax(-1), p)
    if problem is None:
        return
    mistakes = {
        msg: (lambda bug=bug: _top_p_variant(logits, p, bug)) for bug, msg in _TOP_P_BUGS.items()
    }
    diagnose(got, mistakes, atol=1e-6)
    raise Fail(f"{what}: {problem}")


def _top_p_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for logits, p in _top_p_cases():
        _top_p_case(fn, logits, p, timeout)
    return (
        "the smallest set of most likely tokens reaching p, renormalised, for p = 0.05 .. 1, "
        "ties and any leading axes"
    )


def check_top_p_filter(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(logits, p) -> probs``: nucleus (top-p) filtering of ``(..., V)`` logits."""
    return run_check("top_p_filter", lambda: _top_p_steps(fn, timeout))
