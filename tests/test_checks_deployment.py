"""The deployment checks (lesson 15): planted bugs are named, other correct implementations pass."""

from __future__ import annotations

import math
import queue

import torch
from check_helpers import planted_bug_tests

from tfx_course import checks
from tfx_course.export import max_difference
from tfx_course.serve import take_batch

# --- int8_quantize ------------------------------------------------------------------------------


def _quantize(x, *, per_row=True, width=127.5, rounding=torch.round, clamp=True, eps=True):
    amax = x.abs().amax(dim=1, keepdim=True) if per_row else x.abs().amax().expand(x.shape[0], 1)
    scale = amax / width
    if eps:
        scale = scale.clamp(min=torch.finfo(torch.float32).eps)
    q = rounding(x / scale)
    if clamp:
        q = q.clamp(-128, 127)
    return q.to(torch.int32).to(torch.int8), scale


def _int8(quantize_fn=_quantize, dequantize_fn=lambda q, s: q.float() * s):
    class Int8Weight:
        def __init__(self, x):
            got = quantize_fn(x)
            self.qdata, self.scale = got if isinstance(got, tuple) else (got, None)

        def dequantize(self):
            return dequantize_fn(self.qdata, self.scale)

    return Int8Weight


def _quantize_bug(**bug):
    return _int8(lambda x: _quantize(x, **bug))


def _quantize_numpy(x):
    import numpy as np

    a = x.numpy()
    scale = np.maximum(np.abs(a).max(axis=1, keepdims=True) / 127.5, np.finfo(np.float32).eps)
    q = np.clip(np.rint(a / scale), -128, 127).astype(np.int8)
    return torch.from_numpy(q), torch.from_numpy(scale)


class _NoDequantize:
    def __init__(self, x):
        self.qdata, self.scale = _quantize(x)


# --- take_batch -------------------------------------------------------------------------------


def _batch(requests, max_batch, max_wait, clock, *, reset=False, from_call=False, nowait=False):
    start = clock()
    batch = [requests.get()]
    deadline = (start if from_call else clock()) + max_wait
    while len(batch) < max_batch:
        remaining = deadline - clock()
        if nowait:
            try:
                batch.append(requests.get_nowait())
            except queue.Empty:
                break
            continue
        if remaining <= 0:
            break
        try:
            batch.append(requests.get(timeout=remaining))
        except queue.Empty:
            break
        if reset:
            deadline = clock() + max_wait
    return batch


def _batch_bug(**bug):
    return lambda requests, max_batch, max_wait, clock: _batch(
        requests, max_batch, max_wait, clock, **bug
    )


def _batch_unbounded(requests, max_batch, max_wait, clock):
    deadline, batch = None, []
    while True:
        try:
            batch.append(requests.get(timeout=None if deadline is None else max(deadline - clock(), 1e-9)))  # fmt: skip
        except queue.Empty:
            return batch
        deadline = deadline or clock() + max_wait


def _batch_loop(requests, max_batch, max_wait, clock):
    batch = [requests.get()]
    deadline = clock() + max_wait
    while len(batch) < max_batch and clock() < deadline:
        try:
            batch.append(requests.get(block=True, timeout=deadline - clock()))
        except queue.Empty:
            break
    return batch


# --- max_difference ---------------------------------------------------------------------------


def _parity(reference, candidate, inputs, *, first_only=False, first_input=False, no_shape=False,
            nan=False, signed=False):  # fmt: skip
    worst = 0.0
    for args in inputs[:1] if first_input else inputs:
        expected, got = reference(*args), candidate(*args)
        if len(expected) != len(got) and not no_shape:
            raise ValueError("outputs")
        pairs = list(zip(expected, got, strict=False))
        for e, g in pairs[:1] if first_only else pairs:
            if e.shape != g.shape and not no_shape:
                raise ValueError("shape")
            diff = (e.double() - g.double()) if signed else (e.double() - g.double()).abs()
            if not nan:
                same_nan = torch.isnan(e) & torch.isnan(g)
                if bool((torch.isnan(e) ^ torch.isnan(g)).any()):
                    return math.inf
                diff = diff.masked_fill(same_nan, 0.0)
            worst = max(worst, diff.max().item())
    return worst


def _parity_bug(**bug):
    return lambda reference, candidate, inputs: _parity(reference, candidate, inputs, **bug)


BUGS = {
    "int8_quantize": [
        (_quantize_bug(per_row=False), "one scale per row"),
        (_quantize_bug(width=127.0), "by 127.5"),
        (_quantize_bug(rounding=torch.trunc), "truncates toward 0"),
        (_quantize_bug(clamp=False), "clamp the codes"),
        (_quantize_bug(eps=False), "a scale of 0"),
        (_int8(dequantize_fn=lambda q, s: q.float()), "returned the codes"),
        (_int8(dequantize_fn=lambda q, s: q.float() / s), "should return self.qdata * self.scale"),
        (_int8(lambda x: _quantize(x)[0]), "self.scale (one per row) should be a torch.Tensor"),
        (_int8(lambda x: (_quantize(x)[0].int(), _quantize(x)[1])), "dtype torch.int32"),
        (_NoDequantize, "define dequantize(self)"),
    ],
    "take_batch": [
        (_batch_bug(reset=True), "set the deadline once"),
        (_batch_bug(from_call=True), "not from when take_batch was called"),
        (_batch_bug(nowait=True), "get_nowait() takes only"),
        (_batch_unbounded, "stop at max_batch"),
        (lambda requests, max_batch, max_wait, clock: [], "never empty"),
    ],
    "max_difference": [
        (_parity_bug(first_only=True), "compare every output"),
        (_parity_bug(first_input=True), "compare every output of every input"),
        (_parity_bug(no_shape=True), "raise ValueError"),
        (_parity_bug(nan=True), "NaN compares False"),
        (_parity_bug(signed=True), "largest absolute difference"),
    ],
}
ALTERNATIVES = {
    "int8_quantize": [_int8(), _int8(_quantize_numpy)],
    "take_batch": [take_batch, _batch_loop],
    "max_difference": [max_difference, _parity],
}
CHECKS = {
    "int8_quantize": checks.check_int8_quantize,
    "take_batch": checks.check_take_batch,
    "max_difference": checks.check_max_difference,
}

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
