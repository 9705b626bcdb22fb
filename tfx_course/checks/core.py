"""The machinery every check shares: results, time limits, safe calls and comparisons.

A check runs the learner's code through ``call`` (which turns an exception, a hang or
``NotImplementedError`` into a ``Fail`` with a readable sentence), compares what came back
with the reference and with planted mistakes, and reports through ``run_check``: one line
``PASS [name] ...`` or ``FAIL [name] ...`` for the learner, and, when the grader asks for it
(``$TFX_COURSE_RESULTS``), one JSON line in a results file that the grader reads.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.validation import shape_str

DEFAULT_TIMEOUT = 10.0
TIMEOUT_ENV = "TFX_COURSE_CHECK_TIMEOUT"  # seconds each call of learner code may take
RESULTS_ENV = "TFX_COURSE_RESULTS"  # file the grader reads: one JSON object per check
RAISE_ENV = "TFX_COURSE_RAISE_ON_FAIL"  # "1": a failed check raises (for nbgrader)
NOT_ATTEMPTED = "not attempted yet"


# A verdict line: "PASS [name] message" or "FAIL [name] message", what learners see and what
# the grader reads back when a kernel did not write the results file.
VERDICT_LINE = re.compile(r"^(PASS|FAIL) \[([A-Za-z0-9_.\-]+)\] (.*)$", re.MULTILINE)


def verdict(passed: bool) -> str:
    """Return the word a verdict line starts with: PASS or FAIL."""
    return "PASS" if passed else "FAIL"


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check: its name, whether it passed, and what to do next."""

    name: str
    passed: bool
    message: str

    def __str__(self) -> str:
        return f"{verdict(self.passed)} [{self.name}] {self.message}"

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        """Show nothing: the check already printed its verdict."""


class CheckFailed(AssertionError):
    """Raised by a failed check when ``$TFX_COURSE_RAISE_ON_FAIL`` is set (nbgrader mode)."""


class Fail(Exception):
    """A failed step; its message is shown to the learner."""


class _Timeout(BaseException):
    """Raised inside learner code that runs past the time limit."""


def default_timeout() -> float:
    """Return the time limit for one call of learner code (``$TFX_COURSE_CHECK_TIMEOUT``)."""
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def _alarm_available() -> bool:
    """Return whether SIGALRM can time this call (POSIX, main thread); not on Windows."""
    return (
        hasattr(signal, "SIGALRM")
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise ``_Timeout`` in the code run inside after ``seconds`` (SIGALRM)."""

    def _raise(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stop_thread(worker: threading.Thread) -> None:
    """Ask a worker thread stuck in Python code to stop, by raising ``_Timeout`` inside it."""
    set_async_exc = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)
    if worker.ident is None or set_async_exc is None:
        return  # not CPython: the daemon thread ends with the kernel
    set_async_exc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Timeout))
    worker.join(1.0)


def _in_thread(fn: Any, args: tuple, kwargs: dict, seconds: float) -> Any:
    """Run ``fn`` in a worker thread and wait at most ``seconds`` (works on every OS)."""
    outcome: dict[str, Any] = {}
    # Grad and inference mode are per thread: the worker runs in the caller's modes.
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work() -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="tfx-course-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        _stop_thread(worker)
        raise _Timeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _run_limited(fn: Any, args: tuple, kwargs: dict, seconds: float) -> Any:
    """Return ``fn(*args, **kwargs)``, raising ``_Timeout`` after ``seconds`` (0: no limit).

    SIGALRM interrupts the code where it runs, in the caller's thread; where there is no
    SIGALRM (Windows) or the caller is not the main thread, a worker thread runs it instead.
    """
    if seconds <= 0:
        return fn(*args, **kwargs)
    if _alarm_available():
        with _alarm(seconds):
            return fn(*args, **kwargs)
    return _in_thread(fn, args, kwargs, seconds)


def call(what: str, fn: Any, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """Call learner code, turning an exception, a hang or a non-callable into a ``Fail``."""
    limit = default_timeout() if timeout is None else timeout
    if not callable(fn):
        raise Fail(f"{what}: expected a function or class, got {type(fn).__name__}")
    try:
        return _run_limited(fn, args, kwargs, limit)
    except NotImplementedError as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise Fail(f"{NOT_ATTEMPTED}: {what} raised NotImplementedError{detail}") from None
    except _Timeout:
        raise Fail(f"{what} did not return within {limit:g} s (an endless loop?)") from None
    except (Exception, SystemExit) as exc:  # the learner's bug, reported rather than raised
        text = _first_line(str(exc))
        raise Fail(f"{what} raised {type(exc).__name__}: {text}{_hint(text)}") from None


def _first_line(text: str, limit: int = 300) -> str:
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# PyTorch errors whose cure is not obvious from their text.
_HINTS = {
    "view size is not compatible": "after transpose or permute the tensor is not contiguous; "
    "use .reshape(...) or .contiguous().view(...)",
    "must match the size of tensor": "two shapes do not line up; print the .shape of each "
    "operand (batched tensors need .transpose(-2, -1), not .T)",
    "shapes cannot be multiplied": "the inner sizes of a matrix product differ; print the "
    ".shape of each operand",
    "dimension out of range": "the tensor has fewer axes than you index; count from the end "
    "(dim=-1) to work for any number of leading axes",
}


def _hint(text: str) -> str:
    for needle, hint in _HINTS.items():
        if needle in text.lower():
            return f" (hint: {hint})"
    return ""


def _record(result: CheckResult) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result)) + "\n")
    except OSError:
        pass  # the printed line is still there for the grader to read


def run_check(name: str, steps: Callable[[], str]) -> CheckResult:
    """Run a check's steps, print and record the verdict, and return it.

    The global random state is restored afterwards, so a check cell does not change
    what the rest of the notebook computes.
    """
    with torch.random.fork_rng(devices=[]):
        try:
            result = CheckResult(name, True, steps())
        except Fail as failure:
            result = CheckResult(name, False, str(failure))
        except Exception as exc:  # a check must never crash on learner code
            message = f"the check could not run: {type(exc).__name__}: {exc}"
            result = CheckResult(name, False, message)
    print(result, flush=True)
    _record(result)
    if not result.passed and os.environ.get(RAISE_ENV, "") not in ("", "0"):
        raise CheckFailed(str(result))
    return result


# --- comparing what came back ---------------------------------------------------------


def close(a: Tensor, b: Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Return whether two tensors have the same shape and values (compared in float64)."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
        return False
    return torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol)


def max_gap(a: Tensor, b: Tensor) -> float:
    """Return the largest absolute difference between two same-shaped tensors."""
    return (a.detach().double() - b.detach().double()).abs().max().item()


def expect_tensor(
    value: Any,
    what: str,
    *,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    finite: bool = True,
) -> Tensor:
    """Return ``value`` if it is a tensor of the given shape and dtype, else ``Fail``."""
    if not isinstance(value, Tensor):
        raise Fail(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    if dtype is not None and value.dtype != dtype:
        raise Fail(f"{what} has dtype {value.dtype}, expected {dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise Fail(f"{what} has shape {shape_str(value)}, expected {shape_str(shape)}")
    if finite and value.dtype.is_floating_point and not torch.isfinite(value).all():
        raise Fail(
            f"{what} contains NaN or inf: look for -inf in a fully blocked row, a division "
            "by zero, or log of 0"
        )
    return value.detach()


def expect_pair(result: Any, what: str) -> tuple[Tensor, Tensor]:
    """Return ``(out, weights)`` if ``result`` is a pair of finite float tensors."""
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise Fail(f"{what} should return a pair (out, weights), got {type(result).__name__}")
    out, weights = result
    for label, t in (("out", out), ("weights", weights)):
        if not isinstance(t, Tensor):
            raise Fail(f"{what} returned {label} of type {type(t).__name__}, expected a tensor")
        if not t.dtype.is_floating_point:
            raise Fail(f"{what} returned {label} with dtype {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise Fail(
                f"{what} returned {label} containing NaN or inf: fill blocked scores with "
                "torch.finfo(scores.dtype).min rather than -inf, and check for division by zero"
            )
    return out.detach(), weights.detach()


def diagnose(got: Tensor, mistakes: Mapping[str, Callable[[], Tensor]], **tol: float) -> None:
    """Raise ``Fail`` with the message of the first planted mistake that ``got`` matches."""
    for message, variant in mistakes.items():
        try:
            expected = variant()
        except Exception:  # a mistake that cannot even be computed for these inputs
            continue
        if close(got, expected, **tol):
            raise Fail(message)


def is_float(x: Any) -> bool:
    """Return whether ``x`` is a real number (a Python or NumPy float or int, not a bool)."""
    if isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def build_module(
    factory: Callable[..., Any], args: tuple, kwargs: dict, timeout: float | None
) -> nn.Module:
    """Build the learner's module with ``factory(*args, **kwargs)``, or ``Fail`` saying why not."""
    name = getattr(factory, "__name__", "it")
    shown = ", ".join([*map(str, args), *(f"{k}={v}" for k, v in kwargs.items())])
    module = call(f"{name}({shown})", factory, *args, timeout=timeout, **kwargs)
    if not isinstance(module, nn.Module):
        raise Fail(f"{name}({shown}) gave {type(module).__name__}, not an nn.Module")
    return module


def jitter_norms(ref: nn.Module, seed: int) -> None:
    """Give every norm of ``ref`` its own weights, so using the wrong one shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("norm"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def load_reference_weights(module: nn.Module, ref: nn.Module, names: str) -> None:
    """Copy ``ref``'s weights into the learner's module, or ``Fail`` naming what differs."""
    own = {name for name, _ in module.named_parameters()}
    needed = {name for name, _ in ref.named_parameters()}
    missing, unexpected = sorted(needed - own), sorted(own - needed)
    if missing or unexpected:
        raise Fail(
            f"parameter names differ from the course's ({names}): missing {missing}, "
            f"unexpected {unexpected}"
        )
    try:
        module.load_state_dict(ref.state_dict(), strict=False)
    except RuntimeError as exc:
        raise Fail(f"parameters have the wrong shapes: {exc}") from None
