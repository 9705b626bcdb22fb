"""Learner-facing checks: run your code on seeded inputs and name the likely bug.

Each ``check_*`` function calls the learner's code, compares it with the library's
reference and with the mistakes people usually make, prints one line starting with
``PASS [name]`` or ``FAIL [name]``, and returns a ``CheckResult``. A check never raises
because of the learner's code: an exception, a hang (timeout), a wrong type or shape, or
NaN is reported as a failure with a sentence that says what to fix.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    padding_mask,
    split_heads,
)

__all__ = ["CheckResult", "check_attention", "check_multi_head_attention"]

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check: its name, whether it passed, and what to do next."""

    name: str
    passed: bool
    message: str

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} [{self.name}] {self.message}"

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        """Show nothing: the check already printed its verdict."""


class _Fail(Exception):
    """A failed step; its message is shown to the learner."""


class _Timeout(BaseException):
    """Raised inside learner code that runs past the time limit."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield  # signals only work in the main thread; run without a limit elsewhere
        return

    def _raise(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call(what: str, fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> Any:
    """Call learner code, turning an exception or a hang into a ``_Fail``."""
    try:
        with _time_limit(timeout):
            return fn(*args, **kwargs)
    except NotImplementedError as exc:
        raise _Fail(f"not attempted yet: {what} raised NotImplementedError ({exc})") from None
    except _Timeout:
        raise _Fail(f"{what} did not return within {timeout:g} s (an endless loop?)") from None
    except Exception as exc:  # the learner's bug, reported rather than raised
        raise _Fail(f"{what} raised {type(exc).__name__}: {exc}") from None


def _run(name: str, steps: Callable[[], str]) -> CheckResult:
    try:
        result = CheckResult(name, True, steps())
    except _Fail as failure:
        result = CheckResult(name, False, str(failure))
    except Exception as exc:  # a check must never crash on learner code
        result = CheckResult(name, False, f"the check could not run: {type(exc).__name__}: {exc}")
    print(result)
    return result


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def _close(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


def _expect_pair(result: Any, what: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise _Fail(f"{what} should return a pair (out, weights), got {type(result).__name__}")
    out, weights = result
    for label, t in (("out", out), ("weights", weights)):
        if not isinstance(t, Tensor):
            raise _Fail(f"{what} returned {label} of type {type(t).__name__}, expected a tensor")
        if not t.dtype.is_floating_point:
            raise _Fail(f"{what} returned {label} with dtype {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise _Fail(
                f"{what} returned {label} containing NaN or inf: fill blocked scores with "
                "torch.finfo(scores.dtype).min rather than -inf, and check for division by zero"
            )
    return out, weights


# --- scaled dot-product attention ----------------------------------------------------


def _softmax_attention(q: Tensor, k: Tensor, scale: float, mask: Tensor | None) -> Tensor:
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1)


def _diagnose_weights(weights: Tensor, q: Tensor, k: Tensor, v: Tensor) -> None:
    """Compare unmasked weights with the reference and with common mistakes."""
    d_k, d_v = q.shape[-1], v.shape[-1]
    if weights.shape == q.shape[:-1] + (k.shape[-2],) and _close(
        weights, _softmax_attention(q, k, 1 / math.sqrt(d_k), None)
    ):
        return
    expected = _shape(q)[:-2].rstrip(",") + f", {k.shape[-2]})"
    if weights.shape != q.shape[:-1] + (k.shape[-2],):
        if weights.shape == k.shape[:-1] + (q.shape[-2],):
            raise _Fail(
                f"weights have shape {_shape(weights)} = (..., S, T); expected (..., T, S) "
                f"{expected}: compute q @ k.transpose(-2, -1), not k @ q.transpose(-2, -1)"
            )
        raise _Fail(f"weights have shape {_shape(weights)}, expected (..., T, S) {expected}")
    rows = weights.sum(-1)
    if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
        cols = weights.sum(-2)
        if torch.allclose(cols, torch.ones_like(cols), atol=1e-4):
            raise _Fail(
                "softmax over the wrong axis: each query's weights (a row) must sum to 1; "
                "use softmax(dim=-1), over the keys"
            )
        raise _Fail("rows of the weights do not sum to 1: apply softmax to the scores")
    mistakes = {
        1.0: "missing 1/sqrt(d_k) scaling: divide the scores by math.sqrt(d_k)",
        1 / d_k: "divided by d_k instead of sqrt(d_k): use math.sqrt(d_k)",
        math.sqrt(d_k): "multiplied by sqrt(d_k) instead of dividing by it",
        1 / math.sqrt(d_v): "scaled by sqrt of v's size; use d_k = q.shape[-1]",
    }
    for scale, message in mistakes.items():
        if _close(weights, _softmax_attention(q, k, scale, None)):
            raise _Fail(message)
    reference = _softmax_attention(q, k, 1 / math.sqrt(d_k), None)
    gap = (weights - reference).abs().max().item()
    raise _Fail(f"weights differ from softmax(q k^T / sqrt(d_k)) by up to {gap:.3g}")


def _diagnose_masked(weights: Tensor, out: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor):
    blocked = ~mask.expand_as(weights)
    leak = weights[blocked].abs().max().item()
    if leak == 0.0:
        reference = _softmax_attention(q, k, 1 / math.sqrt(q.shape[-1]), mask)
        if not _close(weights, reference):
            rows = weights.sum(-1)
            if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
                raise _Fail(
                    "with a mask, rows no longer sum to 1: you masked after the softmax; "
                    "fill the blocked scores before it"
                )
            raise _Fail("with a mask, the weights of the allowed positions are wrong")
        if not _close(out, reference @ v):
            raise _Fail("with a mask, the output is not weights @ v")
        return
    if weights[~blocked].abs().min().item() == 0.0 and _close(
        weights, _softmax_attention(q, k, 1 / math.sqrt(q.shape[-1]), ~mask)
    ):
        raise _Fail(
            "mask inverted: True means 'may attend'; fill the scores where the mask is False "
            "(scores.masked_fill(~mask, ...))"
        )
    raise _Fail(
        f"positions the mask blocks get weight up to {leak:.3g} (should be exactly 0): "
        "fill the scores where mask is False with torch.finfo(scores.dtype).min before softmax"
    )


def check_attention(fn: Callable[..., Any], timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """Check a learner's ``fn(q, k, v, mask=None) -> (out, weights)``."""

    def steps() -> str:
        gen = torch.Generator().manual_seed(0)
        q, k = torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 3, 5, 8, generator=gen)
        v = torch.randn(2, 3, 5, 6, generator=gen)
        out, weights = _expect_pair(_call("your attention", fn, q, k, v, timeout=timeout), "it")
        _diagnose_weights(weights, q, k, v)
        if out.shape != (2, 3, 4, 6):
            raise _Fail(f"out has shape {_shape(out)}, expected (..., T, Dv) = (2, 3, 4, 6)")
        if not _close(out, weights @ v):
            raise _Fail("out is not weights @ v: multiply the weights by the values")
        # Masked case: padding in the second sequence, plus a causal rule.
        q5 = torch.randn(2, 3, 5, 8, generator=gen)
        keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
        mask = padding_mask(keep) & causal_mask(5)
        out_m, weights_m = _expect_pair(
            _call("your attention with a mask", fn, q5, k, v, mask=mask, timeout=timeout),
            "with a mask, it",
        )
        if weights_m.shape != (2, 3, 5, 5):
            raise _Fail(
                f"with a mask, weights have shape {_shape(weights_m)}, expected (2, 3, 5, 5)"
            )
        _diagnose_masked(weights_m, out_m, q5, k, v, mask)
        torch_out = torch.nn.functional.scaled_dot_product_attention(q5, k, v, attn_mask=mask)
        if not _close(out_m, torch_out):
            raise _Fail("the output differs from F.scaled_dot_product_attention")
        return (
            "shapes, softmax axis, 1/sqrt(d_k) scaling, padding and causal masks, and parity "
            "with F.scaled_dot_product_attention all agree"
        )

    return _run("attention", steps)


# --- multi-head attention ------------------------------------------------------------


def _mha_reference(ref: MultiHeadAttention, query, key, value, mask, bug: str = "") -> Tensor:
    """The reference forward pass, or the same with one common mistake planted."""
    B, T, C = query.shape
    H, D = ref.n_heads, ref.d_head
    if bug == "kv_from_query":
        key = value = query
    q, k, v = ref.q_proj(query), ref.k_proj(key), ref.v_proj(value)
    if bug == "split_order":
        q, k, v = (t.reshape(B, H, t.shape[1], D) for t in (q, k, v))  # (B, H, T, D), wrongly
    else:
        q, k, v = (split_heads(t, H) for t in (q, k, v))  # (B, H, T, D)
    scale = {"no_scale": 1.0, "scale_d_model": 1 / math.sqrt(C)}.get(bug, 1 / math.sqrt(D))
    weights = _softmax_attention(q, k, scale, mask)
    x = weights @ v  # (B, H, T, D)
    x = x.reshape(B, T, C) if bug == "merge_order" else merge_heads(x)  # (B, T, C)
    return x if bug == "no_out_proj" else ref.out_proj(x)


_MHA_BUGS = {
    "split_order": "heads split in the wrong order: view as (B, T, H, D), then transpose(1, 2) "
    "to (B, H, T, D); reshaping straight to (B, H, T, D) mixes positions and heads",
    "merge_order": "heads merged in the wrong order: transpose(1, 2) back to (B, T, H, D) "
    "before reshaping to (B, T, C)",
    "no_out_proj": "output projection missing: pass the merged heads through out_proj",
    "no_scale": "missing 1/sqrt(d_head) scaling of the scores",
    "scale_d_model": "scaled by sqrt(d_model) instead of sqrt(d_head): each head's "
    "dot products have d_head terms",
    "kv_from_query": "keys and values must be projected from `key` and `value`, not `query`",
}


def _load_reference_weights(module: nn.Module, ref: MultiHeadAttention) -> None:
    own = {name for name, _ in module.named_parameters()}
    needed = {name for name, _ in ref.named_parameters()}
    if "out_proj.weight" not in own and "out_proj.weight" in needed:
        raise _Fail(
            "your module has no out_proj: multi-head attention ends with an output projection "
            "nn.Linear(d_model, d_model) named out_proj"
        )
    missing, unexpected = sorted(needed - own), sorted(own - needed)
    if missing or unexpected:
        raise _Fail(
            f"parameter names differ from the course's (q_proj, k_proj, v_proj, out_proj): "
            f"missing {missing}, unexpected {unexpected}"
        )
    try:
        module.load_state_dict(ref.state_dict())
    except RuntimeError as exc:
        raise _Fail(f"parameters have the wrong shapes: {exc}") from None


def _mha_steps(factory: Callable[..., Any], timeout: float) -> str:
    d_model, n_heads = 16, 4
    module = _call(
        f"{getattr(factory, '__name__', 'it')}(16, 4)", factory, d_model, n_heads, timeout=timeout
    )
    if not isinstance(module, nn.Module):
        raise _Fail(
            f"calling it with (d_model, n_heads) gave {type(module).__name__}, not an nn.Module"
        )
    torch.manual_seed(0)
    ref = MultiHeadAttention(d_model, n_heads).eval()
    _load_reference_weights(module, ref)
    module.eval()
    gen = torch.Generator().manual_seed(1)
    query, memory = (
        torch.randn(2, 4, d_model, generator=gen),
        torch.randn(2, 6, d_model, generator=gen),
    )
    with torch.no_grad():
        got = _call("forward(query, key, value)", module, query, memory, memory, timeout=timeout)
        out, weights = _expect_pair(got, "forward")
        expected = _mha_reference(ref, query, memory, memory, None)
        if out.shape != expected.shape:
            raise _Fail(f"out has shape {_shape(out)}, expected (B, T, C) = {_shape(expected)}")
        if weights.shape != (2, n_heads, 4, 6):
            raise _Fail(
                f"weights have shape {_shape(weights)}, expected (B, H, T, S) = (2, 4, 4, 6)"
            )
        if not _close(out, expected):
            for bug, message in _MHA_BUGS.items():
                if _close(out, _mha_reference(ref, query, memory, memory, None, bug)):
                    raise _Fail(message)
            gap = (out - expected).abs().max().item()
            raise _Fail(f"output differs from the reference by up to {gap:.3g} with copied weights")
        keep = torch.tensor([[True] * 4, [True, True, False, False]])
        mask = padding_mask(keep) & causal_mask(4)
        got = _call("forward with a mask", module, query, query, query, mask=mask, timeout=timeout)
        out_m, weights_m = _expect_pair(got, "forward with a mask")
        if weights_m.shape == (2, n_heads, 4, 4) and (weights_m * ~mask).abs().max() > 0:
            raise _Fail(
                "with a mask, blocked positions get non-zero weight: pass the mask on to the "
                "attention (True = may attend)"
            )
        if not _close(out_m, _mha_reference(ref, query, query, query, mask)):
            raise _Fail("with a padding and causal mask, the output differs from the reference")
    return (
        "parameter names, shapes, head split and merge, scaling, output projection, masks "
        "and parity with the course's MultiHeadAttention all agree"
    )


def check_multi_head_attention(
    factory: Callable[..., Any], timeout: float = DEFAULT_TIMEOUT
) -> CheckResult:
    """Check a learner's multi-head attention class, called as ``factory(d_model, n_heads)``.

    The module must name its parameters like the course (``q_proj``, ``k_proj``,
    ``v_proj``, ``out_proj``) and return ``(out, weights)`` from
    ``forward(query, key, value, mask=None)``; the check copies the reference weights in.
    """
    return _run("multi_head_attention", lambda: _mha_steps(factory, timeout))
