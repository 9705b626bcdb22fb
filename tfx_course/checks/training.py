"""Checks for lesson 07: label smoothing, the warmup schedule and greedy decoding.

Shapes: B batch, S source length, T target length, L generated length, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.checks.core import CheckResult, Fail, call, close, is_float, run_check, shape_str
from tfx_course.decoding import greedy_decode
from tfx_course.model import ModelConfig, Transformer
from tfx_course.training import noam_peak_lr, warmup_schedule

__all__ = ["check_label_smoothing", "check_warmup_schedule", "check_greedy_decode"]


# --- label smoothing ----------------------------------------------------------------


def _smoothing_variants(logits: Tensor, targets: Tensor, eps: float, pad: int) -> dict[str, Tensor]:
    V = logits.shape[-1]
    logp = logits.log_softmax(-1)  # (B, T, V)
    keep = targets != pad  # (B, T)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    uniform = -logp.mean(-1)  # (B, T)
    per_token = (1 - eps) * nll + eps * uniform
    others = (-logp.sum(-1) - nll) / (V - 1)  # mean loss over the V - 1 wrong classes
    q = (1 - eps) * F.one_hot(targets, V) + eps / V  # (B, T, V) smoothed target distribution

    def mean(per: Tensor) -> Tensor:
        return (per * keep).sum() / keep.sum()

    flat = (logits.reshape(-1, V), targets.reshape(-1))
    return {
        "padded positions count in the loss: skip the positions where targets == pad_id "
        "(F.cross_entropy's ignore_index)": F.cross_entropy(*flat, label_smoothing=eps),
        "averaged over all B*T positions; divide by the number of real (non-pad) tokens": (
            per_token * keep
        ).sum()
        / keep.numel(),
        "returned the sum over tokens; average over the real tokens": (per_token * keep).sum(),
        "smoothing is ignored: mix (1 - smoothing) * the target's loss with smoothing * the "
        "loss against the uniform distribution": mean(nll),
        "the target's weight must be 1 - smoothing, not 1": mean(nll + eps * uniform),
        "smoothing spread over the V - 1 other classes; like PyTorch, give every class "
        "smoothing / V, the target included": mean((1 - eps) * nll + eps * others),
        "used probabilities where the loss needs log-probabilities: use log_softmax": mean(
            -(q * logits.softmax(-1)).sum(-1)
        ),
        "used the raw logits: take log_softmax(logits, dim=-1) first": mean(-(q * logits).sum(-1)),
    }


def _smoothing_case(fn: Callable[..., Any], eps: float, pad: int, timeout: float | None) -> None:
    gen = torch.Generator().manual_seed(int(eps * 100) + pad)
    V = 7
    logits = 2 * torch.randn(2, 5, V, generator=gen)
    targets = torch.randint(0, V, (2, 5), generator=gen)
    targets[targets == pad] = (pad + 1) % V  # real tokens are never pad...
    targets[1, 3:] = pad  # ...except the padding at the end of sequence 2
    if pad != 0:
        targets[0, 0] = 0  # a real token 0 tells "ignores pad_id" from "ignores 0"
    given = logits.clone().requires_grad_(True)
    what = f"label_smoothed_cross_entropy(logits, targets, smoothing={eps}, pad_id={pad})"
    got = call(what, fn, given, targets.clone(), eps, pad, timeout=timeout)
    if not isinstance(got, Tensor) and is_float(got):
        raise Fail("returned a Python number; return the loss tensor so that loss.backward() works")
    if not isinstance(got, Tensor) or got.numel() != 1:
        shape = shape_str(got) if isinstance(got, Tensor) else type(got).__name__
        raise Fail(f"{what} returned {shape}; return a scalar tensor (one number, the mean loss)")
    if not torch.isfinite(got).all():
        raise Fail(
            f"{what} is NaN or inf: use log_softmax, and divide by the number of real tokens"
        )
    if not got.requires_grad:
        raise Fail("the loss carries no gradient: compute it with tensor operations, no .item()")
    expected = F.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), label_smoothing=eps, ignore_index=pad
    )
    got = got.detach().reshape(())
    if close(got, expected):
        return
    if pad != 0 and close(
        got,
        F.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), label_smoothing=eps, ignore_index=0
        ),
    ):
        raise Fail(f"with pad_id={pad} you ignored token 0: use the pad_id argument")
    for message, wrong in _smoothing_variants(logits, targets, eps, pad).items():
        if close(got, wrong):
            raise Fail(message)
    raise Fail(
        f"{what} = {got.item():.4f}, expected {expected.item():.4f} (F.cross_entropy with label_smoothing)"
    )


def _smoothing_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    for eps, pad in ((0.1, 0), (0.0, 0), (0.3, 3)):
        _smoothing_case(fn, eps, pad, timeout)
    return (
        "equals F.cross_entropy(label_smoothing=..., ignore_index=pad_id) for three settings, "
        "and the loss carries a gradient"
    )


def check_label_smoothing(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(logits, targets, smoothing, pad_id) -> loss``, label-smoothed cross-entropy."""
    return run_check("label_smoothing", lambda: _smoothing_steps(fn, timeout))


# --- warmup schedule ----------------------------------------------------------------


def _noam(step: int, d_model: int, warmup: int) -> float:
    return noam_peak_lr(d_model, warmup) * warmup_schedule("noam", warmup, 10**9)(step - 1)


_SCHEDULE_BUGS: dict[str, Callable[[int, int, int], float]] = {
    "missing the factor d_model^-0.5": lambda s, d, w: min(s**-0.5, s * w**-1.5),
    "multiplied by d_model^0.5; the factor is d_model^-0.5": lambda s, d, w: (
        d**0.5 * min(s**-0.5, s * w**-1.5)
    ),
    "the warmup branch is step * warmup^-1.5, so both branches meet at step = warmup": lambda s, d, w: (
        d**-0.5 * min(s**-0.5, s * w**-0.5)
    ),
    "use min, not max: the rate grows linearly during warmup, then decays as 1/sqrt(step)": lambda s, d, w: (
        d**-0.5 * max(s**-0.5, s * w**-1.5)
    ),
    "off by one: steps count from 1, use step as it is": lambda s, d, w: (
        d**-0.5 * min((s + 1) ** -0.5, (s + 1) * w**-1.5)
    ),
}

_STEPS = {(512, 4000): (1, 10, 2000, 3999, 4000, 4001, 8000, 100000), (64, 10): tuple(range(1, 31))}


def _schedule_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    got: dict[tuple[int, int, int], float] = {}
    for (d, w), steps in _STEPS.items():
        for s in steps:
            what = f"warmup_lr(step={s}, d_model={d}, warmup_steps={w})"
            try:
                value = call(what, fn, s, d, w, timeout=timeout)
            except Fail as failure:
                hint = (
                    " (steps count from 1: step=1 must work)"
                    if "ZeroDivision" in str(failure)
                    else ""
                )
                raise Fail(f"{failure}{hint}") from None
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, int | float) and not is_float(value):
                raise Fail(f"{what} returned {value}; the learning rate must be a finite number")
            if not is_float(value):
                raise Fail(
                    f"{what} returned a {type(value).__name__}; return one finite number, "
                    "the learning rate"
                )
            got[(s, d, w)] = float(value)
    expected = {key: _noam(*key) for key in got}
    if all(math.isclose(got[k], expected[k], rel_tol=1e-6) for k in got):
        return "d_model^-0.5 * min(step^-0.5, step * warmup^-1.5): linear warmup, peak at warmup, then 1/sqrt"
    for message, wrong in _SCHEDULE_BUGS.items():
        if all(math.isclose(got[k], wrong(*k), rel_tol=1e-6) for k in got):
            raise Fail(message)
    key = next(k for k in got if not math.isclose(got[k], expected[k], rel_tol=1e-6))
    raise Fail(
        f"at step={key[0]} (d_model={key[1]}, warmup_steps={key[2]}) you return {got[key]:.6g}, "
        f"expected {expected[key]:.6g}"
    )


def check_warmup_schedule(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(step, d_model, warmup_steps) -> lr``, the paper's warmup schedule (step from 1)."""
    return run_check("warmup_schedule", lambda: _schedule_steps(fn, timeout))


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


def _greedy_variant(model: _ReversalModel, src: Tensor, max_len: int, bug: str) -> Tensor:
    memory = model.encode(src)
    tokens = torch.full((src.shape[0], 1), BOS)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        logits = model.decode(tokens, memory, src)  # (B, t, V)
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
    "any_stop": "you stopped when the first sequence finished; stop when every sequence has "
    "produced EOS (finished.all())",
}


def _trim(tokens: Tensor) -> Tensor:
    """Drop trailing columns that hold only padding (running on to max_len is allowed)."""
    while tokens.shape[1] > 0 and bool((tokens[:, -1] == PAD).all()):
        tokens = tokens[:, :-1]
    return tokens


def _decode_with(fn, model: nn.Module, src: Tensor, max_len: int, timeout: float | None) -> Tensor:
    what = f"greedy_decode(model, src, bos_id={BOS}, eos_id={EOS}, max_len={max_len}, pad_id={PAD})"
    with torch.no_grad():
        got = call(what, fn, model, src.clone(), BOS, EOS, max_len, PAD, timeout=timeout)
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


def _greedy_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    model = _ReversalModel()
    src = torch.tensor(
        [[BOS, 4, 5, 6, 7, EOS], [BOS, 8, 9, EOS, PAD, PAD], [BOS, 10, EOS, PAD, PAD, PAD]]
    )
    model.train()  # the learner's code must switch to eval mode itself
    got = _decode_with(fn, model, src, 8, timeout)
    model.eval()
    expected = greedy_decode(model, src, BOS, EOS, max_len=8, pad_id=PAD, use_cache=False)
    if not torch.equal(_trim(got), _trim(expected)):
        if model.calls_in_training:
            raise Fail(
                "the model ran in training mode (dropout on): call model.eval() before decoding"
            )
        for bug, message in _GREEDY_BUGS.items():
            if torch.equal(_trim(got), _trim(_greedy_variant(model, src, 8, bug))):
                raise Fail(message)
        raise Fail(f"for reversal, decoded {got.tolist()}, expected {expected.tolist()}")
    torch.manual_seed(0)
    config = ModelConfig(
        VOCAB,
        VOCAB,
        d_model=16,
        n_heads=4,
        n_encoder_layers=1,
        n_decoder_layers=1,
        d_ff=32,
        dropout=0.1,
        max_len=8,
    )
    transformer = Transformer(config).eval()
    got = _decode_with(fn, transformer, src, 5, timeout)
    expected = greedy_decode(transformer, src, BOS, EOS, max_len=5, pad_id=PAD)
    if not torch.equal(_trim(got), _trim(expected)):
        raise Fail(
            f"with a small Transformer and max_len=5, decoded {got.tolist()}, expected {expected.tolist()}"
        )
    return "eval mode, last-position argmax, pad after EOS, stop when all finish or at max_len"


def check_greedy_decode(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(model, src, bos_id, eos_id, max_len, pad_id) -> (B, L)`` generated ids."""
    return run_check("greedy_decode", lambda: _greedy_steps(fn, timeout))
