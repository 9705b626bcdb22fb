"""Read a training run's symptoms from its history, and probe two bugs no curve shows.

``diagnose(history)`` looks at what ``fit`` recorded (the ``History``: training loss, learning
rate and gradient norm per step, validation loss per validation) and names the first symptom it
finds, in this order:

- ``"diverged"``: a loss is NaN or infinite (``fit`` stops there and sets ``diverged_at``);
- ``"unstable"``: the loss jumped up, early (above where it started) or later (well above the
  best it had reached), and the run ended far from where a healthy one gets;
- ``"plateau"``: the loss hardly moved over the whole run, the mark of a learning rate far too
  small (or of weights that do not train);
- ``"overfitting"``: the validation loss rose clearly after its minimum while the training loss
  kept falling;
- ``"healthy"``: none of these.

The thresholds are rules of thumb for the course's runs (relative changes of a smoothed loss),
named below and reported as evidence; they are not a proof. ``padding_changes_output`` and
``tokenizer_mismatch`` probe a padding-mask bug and a tokenizer swapped between training and
inference, which leave the training curves looking fine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tfx_course.data.tokenizers import TokenizerBase
from tfx_course.model import eval_mode
from tfx_course.training import History

__all__ = [
    "SYMPTOMS",
    "Diagnosis",
    "diagnose",
    "smooth",
    "overfitting_start",
    "padding_changes_output",
    "tokenizer_mismatch",
]

SYMPTOMS = ("diverged", "unstable", "plateau", "overfitting", "healthy")
MIN_STEPS = 10  # fewer recorded steps cannot show a trend
PLATEAU_DROP = 0.10  # the smoothed loss fell by less than 10% of where it started
EARLY_RISE = 0.02  # in the first tenth of the run the loss rose 2% above the first step's
STALLED_DROP = 0.40  # ... and the run ended less than 40% below where it started
SPIKE = 0.25  # later, the smoothed loss climbed 25% above the best it had reached
OVERFIT_RISE = 0.05  # the validation loss ended 5% above its minimum


@dataclass(frozen=True)
class Diagnosis:
    """A run's symptom, a sentence on what it shows and what to try, and the numbers behind it."""

    symptom: str  # one of SYMPTOMS
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.symptom}: {self.message}"


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Return the trailing moving average of ``values`` over ``window`` steps (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _as_history(history: History | Mapping[str, Any]) -> History:
    if isinstance(history, History):
        return history
    if isinstance(history, Mapping):
        try:
            return History.from_dict(dict(history))
        except TypeError as err:
            raise ValueError(f"not a training history (History.to_dict()): {err}") from None
    raise TypeError(f"diagnose expects a History or its dict, got {type(history).__name__}")


def _not_finite(h: History) -> Diagnosis | None:
    bad = [(s, v) for s, v in zip(h.step, h.loss, strict=True) if not math.isfinite(v)]
    bad += [(s, v) for s, v in zip(h.val_step, h.val_loss, strict=True) if not math.isfinite(v)]
    if h.diverged_at is None and not bad:
        return None
    step, value = min(bad) if bad else (h.diverged_at, float("nan"))
    lr = h.lr[h.step.index(step)] if step in h.step else None
    where = f" (learning rate {lr:.2g})" if lr is not None else ""
    return Diagnosis(
        "diverged",
        f"the loss became {value} at step {step}{where}. Look for a learning rate too high "
        "for the first steps (add warmup, clip gradients), or float16 overflow (values above "
        "65,504 become inf: compute in float32 or bfloat16).",
        {"step": step, "loss": value, "lr": lr},
    )


def _shape(h: History) -> dict[str, float]:
    """Return the numbers the loss-curve rules read: start, end, early rise, spikes, drop."""
    n = len(h.loss)
    window = max(1, n // 20)
    smoothed = smooth(h.loss, window)
    start, end = h.loss[0], smoothed[-1]
    early = h.loss[1 : max(3, n // 10)]
    best, spike, spike_step = smoothed[0], 0.0, None
    for i in range(window, n):  # after one window, compare with the best reached so far
        best = min(best, smoothed[i - 1])
        rise = (smoothed[i] - best) / max(best, 1e-12)
        if rise > spike:
            spike, spike_step = rise, h.step[i]
    return {
        "start": start,
        "end": end,
        "drop": (start - end) / max(abs(start), 1e-12),
        "early_rise": max(early) / start - 1.0 if early and start > 0 else 0.0,
        "spike": spike,
        "spike_step": spike_step,
        "peak_lr": max(h.lr) if h.lr else float("nan"),
    }


def _unstable(s: dict[str, float]) -> Diagnosis | None:
    early = s["early_rise"] > EARLY_RISE and s["drop"] < STALLED_DROP
    if not early and s["spike"] <= SPIKE:
        return None
    what = (
        f"in the first steps the loss rose {s['early_rise']:.0%} above where it started and "
        f"the run ended only {s['drop']:.0%} below it"
        if early
        else f"at step {s['spike_step']} the smoothed loss climbed {s['spike']:.0%} above the "
        "best it had reached"
    )
    return Diagnosis(
        "unstable",
        f"{what}. The first steps were too large: add or lengthen warmup, lower the peak "
        f"learning rate ({s['peak_lr']:.2g}), clip gradients, or use Pre-LN.",
        s,
    )


def _plateau(s: dict[str, float]) -> Diagnosis | None:
    if s["drop"] >= PLATEAU_DROP:
        return None
    return Diagnosis(
        "plateau",
        f"the loss hardly moved: from {s['start']:.3g} to {s['end']:.3g} ({s['drop']:.1%}). With "
        f"a peak learning rate of {s['peak_lr']:.2g} the steps are probably far too small: try "
        "10 to 1000 times more (a learning-rate range test finds where the loss starts to fall).",
        s,
    )


def overfitting_start(
    history: History, tolerance: float = OVERFIT_RISE, window: int = 10
) -> int | None:
    """Return the validation step where overfitting starts, or None if the history shows none.

    That is the step of the lowest validation loss (the first, on a tie), provided the last
    validation loss lies more than ``tolerance`` (relative) above it and the training loss fell
    meanwhile: its mean over the ``window`` steps up to the end is below its mean over the
    ``window`` steps up to that validation step.
    """
    if len(history.val_loss) < 2:
        return None
    best = min(range(len(history.val_loss)), key=history.val_loss.__getitem__)
    low, last = history.val_loss[best], history.val_loss[-1]
    if last <= low * (1 + tolerance):
        return None
    step = history.val_step[best]
    before = [v for s, v in zip(history.step, history.loss, strict=True) if s <= step][-window:]
    if not before or sum(history.loss[-window:]) / len(history.loss[-window:]) >= sum(before) / len(before):  # fmt: skip
        return None  # the training loss rose too: not overfitting, something else
    return step


def _overfitting(h: History) -> Diagnosis | None:
    window = max(1, len(h.loss) // 20)
    step = overfitting_start(h, OVERFIT_RISE, window) if len(h.val_loss) >= 3 else None
    if step is None:
        return None
    low, last = h.val_loss[h.val_step.index(step)], h.val_loss[-1]
    at_best = _mean_up_to(h, step, window)
    at_end = _mean_up_to(h, h.step[-1], window)
    return Diagnosis(
        "overfitting",
        f"the validation loss rose from {low:.3g} at step {step} to {last:.3g} at step "
        f"{h.val_step[-1]} while the training loss fell from {at_best:.3g} to {at_end:.3g}. "
        "The model memorises its training set: more data, more dropout, a smaller model, or "
        f"stop at step {step} (keep the best checkpoint).",
        {"best_step": step, "best_val_loss": low, "last_val_loss": last,
         "train_loss_at_best": at_best, "train_loss_at_end": at_end},
    )  # fmt: skip


def _mean_up_to(h: History, step: int, window: int) -> float:
    """Return the mean training loss over the ``window`` steps up to ``step``."""
    upto = [v for s, v in zip(h.step, h.loss, strict=True) if s <= step][-window:]
    return sum(upto) / len(upto)


def diagnose(history: History | Mapping[str, Any]) -> Diagnosis:
    """Name the first symptom ``history`` shows (see ``SYMPTOMS``), with what to try next.

    ``history`` is a ``History`` or its ``to_dict()`` (a run's history.json).
    """
    h = _as_history(history)
    if len(h.loss) < MIN_STEPS and h.diverged_at is None:
        raise ValueError(
            f"the history holds {len(h.loss)} training steps; diagnosing a trend needs at least "
            f"{MIN_STEPS}"
        )
    found = _not_finite(h)
    if found is None:
        shape = _shape(h)
        found = _unstable(shape) or _plateau(shape) or _overfitting(h)
        if found is None:
            found = Diagnosis(
                "healthy",
                f"the loss fell from {shape['start']:.3g} to {shape['end']:.3g} "
                f"({shape['drop']:.0%}) without jumps"
                + (", and the validation loss did not turn up." if h.val_loss else "."),
                shape,
            )
    return found


@torch.no_grad()
def padding_changes_output(
    model: nn.Module, src: torch.Tensor, tgt: torch.Tensor, extra: int = 5, pad_id: int = 0
) -> float:
    """Return how much appending ``extra`` padding tokens to the source changes the logits.

    A model whose masks hide padding gives the same logits (differences of float rounding,
    about 1e-6); a padding-mask bug lets the pads in, and the logits move by far more.

    Shapes: src (B, S), tgt (B, T) -> the largest absolute change of the (B, T, V) logits.
    """
    padded = torch.cat([src, src.new_full((src.shape[0], extra), pad_id)], dim=1)  # (B, S + extra)
    with eval_mode(model):
        return (model(padded, tgt) - model(src, tgt)).abs().max().item()


def tokenizer_mismatch(
    trained_with: TokenizerBase, used: TokenizerBase, texts: Sequence[str]
) -> float:
    """Return the share of ``texts`` whose ids differ between two tokenizers (0.0: they agree).

    A model only understands the ids of the tokenizer it was trained with; one retrained on
    other text, even with the same vocabulary size, gives other ids without any error.
    """
    if not texts:
        raise ValueError("give at least one text to compare the tokenizers on")
    differ = sum(trained_with.encode(t) != used.encode(t) for t in texts)
    return differ / len(texts)
