"""Checks for quantization and deployment (lesson 15): int8 quantize and dequantize, the
batching queue of a server, and a parity test between a model and its exported program.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tfx_course.checks.core import CheckResult, Fail, call, expect_tensor, run_check
from tfx_course.quantize import dequantize, quantize, symmetric_scale

__all__ = ["check_int8_quantize", "check_take_batch", "check_max_difference"]


# --- int8 quantize and dequantize -----------------------------------------------------------


def _weights() -> Tensor:
    g = torch.Generator().manual_seed(15)
    w = torch.randn(6, 16, generator=g) * torch.tensor([0.05, 0.5, 1.0, 2.0, 4.0, 1.0])[:, None]
    w[2] = 0.0  # a row of zeros: its scale must not be 0
    w[5, 3] = 40.0  # an outlier: only its own row gets a coarse grid
    return w


def _codes_close(got: Tensor, expected: Tensor, x: Tensor, scale: Tensor) -> bool:
    """Equal codes, except off by one where x / scale lies within 1e-3 of a rounding tie."""
    diff = (got.int() - expected.int()).abs()
    if int(diff.max()) > 1:
        return False
    ratio = (x / scale).abs()
    near_tie = ((ratio - ratio.floor()) - 0.5).abs() < 1e-3
    return bool((near_tie | (diff == 0)).all())


def _quantize_mistakes(x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """What the usual mistakes return for ``x``: (codes as int32, scales)."""
    eps = torch.finfo(torch.float32).eps
    amax = x.abs().amax(dim=1, keepdim=True)
    right = symmetric_scale(x)
    whole = (x.abs().amax() / 127.5).expand_as(right).clamp(min=eps)
    narrow = (amax / 127).clamp(min=eps)
    return {
        "use one scale per row (amax over dim=1, keepdim=True), not one for the whole tensor": (
            torch.round(x / whole).clamp(-128, 127).int(), whole),
        "divide max|x| by 127.5, half the width of [-128, 127], not by 127": (
            torch.round(x / narrow).clamp(-128, 127).int(), narrow),
        "round to the nearest integer (torch.round); .to(torch.int8) alone truncates toward 0": (
            (x / right).trunc().clamp(-128, 127).int(), right),
        "clamp the codes to [-128, 127] before converting to int8: 128 wraps around to -128": (
            torch.round(x / right).to(torch.int32).to(torch.int8).int(), right),
    }  # fmt: skip


def _quantized(cls: Callable, x: Tensor, timeout: float | None) -> Any:
    """Build the learner's ``Int8Weight(x)`` and check what it holds: (object, codes, scales)."""
    obj = call("Int8Weight(x)", cls, x.clone(), timeout=timeout)
    missing = [name for name in ("qdata", "scale", "dequantize") if not hasattr(obj, name)]
    if missing:
        raise Fail(f"Int8Weight(x) gave a {type(obj).__name__} without {', '.join(missing)}: "
                   "store self.qdata and self.scale in __init__ and define dequantize(self)")  # fmt: skip
    q = expect_tensor(obj.qdata, "self.qdata (the codes)", shape=(6, 16), dtype=torch.int8)
    scale = expect_tensor(obj.scale, "self.scale (one per row)", shape=(6, 1), finite=False)
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise Fail("a row of zeros got a scale of 0 (or not finite): clamp the scale to a small "
                   "positive minimum, e.g. .clamp(min=torch.finfo(torch.float32).eps)")  # fmt: skip
    return obj, q, scale


def _quantize_steps(cls: Callable, timeout: float | None) -> str:
    x = _weights()
    obj, q, scale = _quantized(cls, x, timeout)
    ref_scale = symmetric_scale(x)
    ref_q = quantize(x, ref_scale)
    good = torch.allclose(scale.double(), ref_scale.double(), rtol=1e-5, atol=1e-9)
    if not (good and _codes_close(q, ref_q, x, ref_scale)):
        for message, (bad_q, bad_scale) in _quantize_mistakes(x).items():
            if torch.allclose(scale.double(), bad_scale.double(), rtol=1e-5) and (q.int() - bad_q).abs().max() <= 1:  # fmt: skip
                raise Fail(message)
        worst = int((q.int() - ref_q.int()).abs().argmax()) // 16
        raise Fail(f"row {worst}: codes {q[worst, :4].tolist()}... scale {scale[worst].item():.4g}; "
                   f"expected {ref_q[worst, :4].tolist()}... scale {ref_scale[worst].item():.4g}")  # fmt: skip
    obj.qdata, obj.scale = ref_q.clone(), ref_scale.clone()  # dequantize what it should hold
    back = expect_tensor(call("dequantize()", obj.dequantize, timeout=timeout), "dequantize()'s result", shape=(6, 16))  # fmt: skip
    if not back.is_floating_point():
        raise Fail(f"dequantize() should return floats, got {back.dtype}")
    if torch.allclose(back.double(), ref_q.double(), atol=1e-6):
        raise Fail("dequantize() returned the codes: multiply them by their row's scale")
    if not torch.allclose(back.double(), dequantize(ref_q, ref_scale).double(), rtol=1e-6, atol=1e-9):  # fmt: skip
        raise Fail("dequantize() should return self.qdata * self.scale (codes as float), row by row")  # fmt: skip
    if not bool(((back - x).abs() <= ref_scale * 0.5001).all()):
        raise Fail("the round trip moved a value by more than half a step")
    return "per-row scales, rounded and clamped codes, a round trip within half a step"


def check_int8_quantize(cls: Callable, timeout: float | None = None) -> CheckResult:
    """Check ``Int8Weight(x)``: ``.qdata`` int8 codes, ``.scale`` per row, ``.dequantize()``."""
    return run_check("int8_quantize", lambda: _quantize_steps(cls, timeout))


# --- the batching queue -----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _ArrivalQueue(queue.Queue):
    """Requests arriving at given times on a fake clock; waiting moves the clock, not real time."""

    def __init__(self, arrivals: list[float], clock: _Clock) -> None:
        super().__init__()
        self.arrivals, self.clock, self.next = arrivals, clock, 0

    def qsize(self) -> int:
        return sum(1 for t in self.arrivals[self.next :] if t <= self.clock.now)

    def empty(self) -> bool:
        return self.qsize() == 0

    def get(self, block: bool = True, timeout: float | None = None) -> int:
        if self.next >= len(self.arrivals):
            if block and timeout is None:
                raise Fail("take_batch waited for a request that never comes, after the batch "
                           "was complete: stop at max_batch, or when the time is up")  # fmt: skip
            self.clock.now += timeout or 0.0
            raise queue.Empty
        arrival = self.arrivals[self.next]
        if arrival > self.clock.now:
            if not block or (timeout is not None and arrival > self.clock.now + timeout):
                self.clock.now += timeout if block and timeout else 0.0
                raise queue.Empty
            self.clock.now = arrival
        self.next += 1
        return self.next - 1

    def get_nowait(self) -> int:
        return self.get(block=False)


# (arrival times, max_batch, max_wait, the batch): a full batch, a deadline, a late first request
_BATCH_CASES = [
    ([0.0, 0.001, 0.002, 0.003, 0.004, 0.005], 4, 1.0, [0, 1, 2, 3]),
    ([0.0, 0.3, 0.6, 0.9], 8, 0.5, [0, 1]),
    ([5.0, 5.2, 5.4, 5.6, 5.8], 8, 0.5, [0, 1, 2]),
    ([5.0, 5.0, 5.0, 5.0, 5.0], 3, 0.0, [0]),
]


def _take_batch_with(requests: queue.Queue, max_batch: int, max_wait: float, clock: _Clock,
                     mistake: str) -> list:  # fmt: skip
    """``take_batch`` with one usual mistake planted, to name it when a learner makes it."""
    start = clock()
    batch = [requests.get()]
    deadline = (start if mistake == "from_call" else clock()) + max_wait
    while len(batch) < max_batch:
        try:
            if mistake == "nowait":
                batch.append(requests.get_nowait())
                continue
            if deadline - clock() <= 0:
                break
            batch.append(requests.get(timeout=deadline - clock()))
        except queue.Empty:
            break
        if mistake == "reset":
            deadline = clock() + max_wait
    return batch


_BATCH_MISTAKES = {
    "reset": "wait max_wait in all, counted from the first request: set the deadline once, "
    "clock() + max_wait after the first get(), not a fresh max_wait per request",
    "from_call": "count the deadline from when the first request arrived (after the blocking "
    "get()), not from when take_batch was called",
    "nowait": "wait for more requests until the deadline (requests.get(timeout=remaining)): "
    "get_nowait() takes only those already queued",
}


def _batches(fn: Callable, timeout: float | None) -> list[Any]:
    answers = []
    for arrivals, max_batch, max_wait, _ in _BATCH_CASES:
        clock = _Clock()
        what = f"take_batch(requests, max_batch={max_batch}, max_wait={max_wait}, clock)"
        got = call(what, fn, _ArrivalQueue(arrivals, clock), max_batch, max_wait, clock, timeout=timeout)  # fmt: skip
        if not isinstance(got, list):
            raise Fail(f"{what} should return a list of requests, got {type(got).__name__}")
        if not got:
            raise Fail("a batch is never empty: block on requests.get() for the first request")
        if len(got) > max_batch:
            raise Fail(f"{what} returned {len(got)} requests: stop at max_batch")
        answers.append(got)
    return answers


def _batch_steps(fn: Callable, timeout: float | None) -> str:
    answers = _batches(fn, timeout)
    if answers == [case[3] for case in _BATCH_CASES]:
        return "blocks for the first request, then fills up to max_batch until max_wait has passed"  # fmt: skip
    for mistake, message in _BATCH_MISTAKES.items():
        planted = _batches(lambda *args, m=mistake: _take_batch_with(*args, mistake=m), None)
        if answers == planted:
            raise Fail(message)
    for (arrivals, _, max_wait, expected), got in zip(_BATCH_CASES, answers, strict=True):
        if got != expected:
            raise Fail(f"requests arriving at {arrivals} s, max_wait={max_wait}: got {got}, "
                       f"expected {expected}")  # fmt: skip
    return "unreachable"


def check_take_batch(fn: Callable, timeout: float | None = None) -> CheckResult:
    """Check ``take_batch(requests, max_batch, max_wait, clock) -> list of requests``."""
    return run_check("take_batch", lambda: _batch_steps(fn, timeout))


# --- a parity test for an exported program -------------------------------------------------------


def _program(*outputs: Tensor) -> Callable[..., tuple[Tensor, ...]]:
    """A stand-in program that returns ``outputs`` (cloned) whatever its inputs."""
    return lambda *args: tuple(o.clone() for o in outputs)


def _by_input(table: dict[int, tuple[Tensor, ...]]) -> Callable[..., tuple[Tensor, ...]]:
    """A stand-in program whose outputs depend on its one input, an int tensor key."""
    return lambda key: tuple(o.clone() for o in table[int(key)])


def _parity_cases() -> list[tuple[str, Any, Any, list, float | type]]:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, generator=g), torch.randn(2, 3, generator=g)
    nan = a.clone()
    nan[0, 1] = float("nan")
    keys = [(torch.tensor(0),), (torch.tensor(1),)]
    late = {0: (a, b), 1: (a, b - 0.25)}
    return [
        ("the same outputs", _program(a, b), _program(a, b), [()], 0.0),
        ("the second output 0.5 lower", _program(a, b), _program(a, b - 0.5), [()], 0.5),
        ("the first output 0.3 higher", _program(a, b), _program(a + 0.3, b), [()], 0.3),
        (
            "a difference only on the second input",
            _by_input({0: (a, b), 1: (a, b)}),
            _by_input(late),
            keys,
            0.25,
        ),  # fmt: skip
        ("a NaN the reference does not have", _program(a, b), _program(nan, b), [()], math.inf),
        ("a NaN at the same place in both", _program(nan, b), _program(nan, b), [()], 0.0),
        (
            "a (1, 5) output where (2, 5) is expected",
            _program(a, b),
            _program(a[:1], b),
            [()],
            ValueError,
        ),  # fmt: skip
        ("one output where two are expected", _program(a, b), _program(a), [()], ValueError),
    ]


def _parity_steps(fn: Callable, timeout: float | None) -> str:
    for name, reference, candidate, inputs, expected in _parity_cases():
        what = f"max_difference(reference, candidate, inputs) on {name}"
        if expected is ValueError:
            try:
                got = fn(reference, candidate, inputs)
            except ValueError:
                continue
            except NotImplementedError:
                call(what, fn, reference, candidate, inputs, timeout=timeout)  # reports it
            except Exception as err:  # noqa: BLE001 - the learner's own error, named
                raise Fail(f"{what} raised {type(err).__name__}; raise ValueError saying what differs") from None  # fmt: skip
            raise Fail(f"{what} returned {got!r}: raise ValueError, since broadcasting would "
                       "hide the difference")  # fmt: skip
        got = call(what, fn, reference, candidate, inputs, timeout=timeout)
        if not isinstance(got, float | int) or isinstance(got, bool):
            raise Fail(f"{what}: return a float, got {type(got).__name__}")
        if expected == math.inf and math.isfinite(got):
            raise Fail(f"{what}: returned {got:.4g}, expected inf: a NaN on one side only must "
                       "give inf, but NaN compares False with everything, so max() and > skip it")  # fmt: skip
        if math.isnan(got):
            raise Fail(f"{what} returned nan: a NaN on one side only should give inf, and the "
                       "same NaN on both sides counts as equal")  # fmt: skip
        if not math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-6):
            raise Fail(f"{what}: returned {got:.4g}, expected {expected:.4g} (compare every "
                       "output of every input tuple, by the largest absolute difference)")  # fmt: skip
    return "every output of every input, shapes checked, NaN and inf handled"


def check_max_difference(fn: Callable, timeout: float | None = None) -> CheckResult:
    """Check ``max_difference(reference, candidate, inputs) -> float`` (ValueError on a mismatch)."""
    return run_check("max_difference", lambda: _parity_steps(fn, timeout))
