"""Matplotlib pictures for the lessons: masks, attention weights, heads and curves.

Shapes: T query length, S key length, H heads. Every function takes tensors or arrays,
draws on the given Axes (or a new figure), sets a title and axis labels, and returns
what it drew on, so a notebook can adjust it or a test can inspect it. Masks follow the
course's convention: True = may attend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

from tfx_course.training import History
from tfx_course.validation import shape_str

__all__ = [
    "plot_mask",
    "plot_attention",
    "plot_heads",
    "plot_curves",
    "plot_position_changes",
    "plot_history",
    "plot_positional_encoding",
    "plot_padding",
    "label_log_axis",
    "save_curves",
]

# Light grey for blocked positions, blue for allowed ones.
MASK_COLOURS = ListedColormap(["#eeeeee", "#3b75af"])
WEIGHTS_CMAP = "viridis"


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def _squeeze_to(x: np.ndarray, dims: int, name: str, expected: str, hint: str) -> np.ndarray:
    """Drop leading size-1 axes until ``x`` has ``dims`` axes, or explain what to pass."""
    while x.ndim > dims and x.shape[0] == 1:
        x = x[0]
    if x.ndim != dims:
        raise ValueError(f"{name} must have shape {expected}, got {shape_str(x.shape)}; {hint}")
    return x


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def _set_ticks(ax: Axes, n_rows: int, n_cols: int, x_labels, y_labels) -> None:
    for labels, n, axis in ((x_labels, n_cols, "x"), (y_labels, n_rows, "y")):
        if labels is not None and len(labels) != n:
            raise ValueError(
                f"{axis}_labels has {len(labels)} entries but the matrix has {n} "
                f"{'columns (keys)' if axis == 'x' else 'rows (queries)'}; pass one label each"
            )
    ax.set_xticks(range(n_cols), x_labels if x_labels is not None else range(n_cols))
    ax.set_yticks(range(n_rows), y_labels if y_labels is not None else range(n_rows))
    if x_labels is not None:
        ax.tick_params(axis="x", labelrotation=90)


def plot_mask(
    mask: torch.Tensor | np.ndarray,
    ax: Axes | None = None,
    title: str = "mask (True = may attend)",
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    legend: bool = True,
) -> Axes:
    """Draw a boolean mask: allowed positions in blue, blocked ones in light grey.

    Shapes:
        mask: (T, S), or with leading size-1 axes such as (1, 1, T, S).
        Row t is query position t, column s is key position s.
    """
    mask = _to_numpy(mask, "mask")
    if mask.dtype != np.bool_:
        raise TypeError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; "
            "for 0/1 values pass mask.bool()"
        )
    hint = "pick one mask, e.g. mask[0, 0], or expand a padding row with mask.expand(T, S)"
    mask = _squeeze_to(mask, 2, "mask", "(T, S)", hint)
    ax = _new_axes(ax, (3.0, 3.0))
    ax.imshow(mask.astype(np.float32), cmap=MASK_COLOURS, vmin=0.0, vmax=1.0)
    _set_ticks(ax, mask.shape[0], mask.shape[1], x_labels, y_labels)
    ax.set_title(title)
    ax.set_xlabel("key position s")
    ax.set_ylabel("query position t")
    if legend:
        handles = [
            Patch(color=MASK_COLOURS(1.0), label="True: may attend"),
            Patch(color=MASK_COLOURS(0.0), label="False: blocked"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return ax


def plot_attention(
    weights: torch.Tensor | np.ndarray,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str = "attention weights",
    annotate: bool = False,
    colorbar: bool = True,
    vmax: float | None = 1.0,
) -> Axes:
    """Draw one attention matrix as a heatmap: row t shows where query t looks.

    Shapes:
        weights: (T, S), or with leading size-1 axes such as (1, 1, T, S).

    ``x_labels`` name the keys (columns) and ``y_labels`` the queries (rows).
    ``annotate`` writes each weight in its cell (for small matrices). The colour scale
    runs from 0 to ``vmax`` (1 by default, so pictures of different heads compare);
    ``vmax=None`` stretches it to the largest weight.
    """
    weights = _to_numpy(weights, "weights")
    hint = "pick one sequence and head, e.g. weights[0, 0], or use plot_heads for all heads"
    weights = _squeeze_to(weights, 2, "weights", "(T, S)", hint).astype(np.float32)
    ax = _new_axes(ax, (3.5, 3.0))
    image = ax.imshow(weights, cmap=WEIGHTS_CMAP, vmin=0.0, vmax=vmax)
    _set_ticks(ax, weights.shape[0], weights.shape[1], x_labels, y_labels)
    ax.set_title(title)
    ax.set_xlabel("key" if x_labels is not None else "key position s")
    ax.set_ylabel("query" if y_labels is not None else "query position t")
    if annotate:
        top = vmax if vmax is not None else float(weights.max())
        for (t, s), w in np.ndenumerate(weights):
            colour = "black" if w > 0.6 * top else "white"
            ax.text(s, t, f"{w:.2f}", ha="center", va="center", color=colour, fontsize=8)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_heads(
    weights: torch.Tensor | np.ndarray,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str = "attention weights per head",
    head_names: Sequence[str] | None = None,
    ncols: int | None = None,
) -> Figure:
    """Draw each head's attention matrix side by side, on one shared colour scale.

    Shapes:
        weights: (H, T, S), or (1, H, T, S) for a batch of one.

    Returns the new Figure; its Axes (one per head, in head order) are ``fig.axes``,
    followed by the colour bar's.
    """
    weights = _to_numpy(weights, "weights")
    hint = "pick one sequence of the batch, e.g. weights[0] of a (B, H, T, S) tensor"
    weights = _squeeze_to(weights, 3, "weights", "(H, T, S)", hint)
    n_heads = weights.shape[0]
    if head_names is not None and len(head_names) != n_heads:
        raise ValueError(f"head_names has {len(head_names)} entries for {n_heads} heads")
    ncols = min(n_heads, 4) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    nrows = -(-n_heads // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.4 * ncols + 0.8, 2.6 * nrows), squeeze=False, layout="constrained"
    )
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.remove()
            continue
        name = head_names[h] if head_names is not None else f"head {h}"
        plot_attention(weights[h], x_labels, y_labels, ax=ax, title=name, colorbar=False)
        if h % ncols:  # rows are labelled once, at the left of each row of panels
            ax.set_ylabel("")
            ax.tick_params(labelleft=False)
    fig.colorbar(axes.flat[0].images[0], ax=list(axes.flat[:n_heads]), shrink=0.8)
    fig.suptitle(title)
    return fig


def plot_curves(
    x: Sequence[float] | np.ndarray | torch.Tensor,
    curves: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
    ax: Axes | None = None,
    title: str = "",
    xlabel: str = "x",
    ylabel: str = "y",
    logx: bool = False,
    logy: bool = False,
) -> Axes:
    """Draw one line per entry of ``curves`` against the shared ``x``, with a legend.

    Shapes:
        x: (N,), each curve: (N,). The legend shows each curve's key.

    ``logx`` uses a base-2 scale (sizes like d_k double), ``logy`` a base-10 one.
    """
    x = np.asarray(_to_numpy(x, "x") if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be one-dimensional, got shape {x.shape}")
    if not curves:
        raise ValueError("curves is empty: pass a dict like {'train loss': values}")
    ax = _new_axes(ax, (4.5, 3.0))
    for label, values in curves.items():
        y = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"curve {label!r} has shape {y.shape} but x has shape {x.shape}")
        ax.plot(x, y, marker="o" if len(x) <= 12 else None, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    return ax


def plot_position_changes(
    changes: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
    changed: Sequence[int] = (),
    x_labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str = "output change per position",
    xlabel: str = "position t",
    ylabel: str = "max |change| of the output",
    logy: bool = False,
) -> Axes:
    """Draw how much each position's output moved under each setting, as grouped bars.

    Shapes:
        each entry of changes: (T,), one number per position, e.g.
        ``(out - edited_out).abs().amax(-1)[0]`` for outputs of shape (1, T, C).

    ``changed`` lists the positions whose input was edited; they are shaded, so a bar
    outside the shading shows information travelling from the edit to another position
    (the point of an encoder, a leak of the future in a decoder). ``logy`` uses a base-10
    scale, for changes of very different sizes; a change of exactly 0 then draws no bar.
    """
    bars = _per_position(changes)
    n_positions = next(iter(bars.values())).shape[0]
    bad = [p for p in changed if not 0 <= p < n_positions]
    if bad:
        raise ValueError(f"changed positions {bad} are outside 0..{n_positions - 1}")
    if x_labels is not None and len(x_labels) != n_positions:
        raise ValueError(f"x_labels has {len(x_labels)} entries for {n_positions} positions")
    ax = _new_axes(ax, (4.5, 3.0))
    width = 0.8 / len(bars)
    handles = []
    for i, (label, y) in enumerate(bars.items()):
        offset = (i - (len(bars) - 1) / 2) * width
        handles.append(ax.bar(np.arange(n_positions) + offset, y, width, label=label))
    handles += _shade_positions(ax, changed)
    ax.set_xticks(range(n_positions), x_labels if x_labels is not None else range(n_positions))
    ax.set_xlim(-0.5, n_positions - 0.5)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return ax


def label_log_axis(ax: Axes, axis: str = "y") -> None:
    """Label a log axis with plain numbers ("0.5", "2"), minor ticks too when it spans little.

    Matplotlib labels a log axis that spans less than a decade with "6x10^0"-style minor ticks,
    or with no tick at all near the data; this labels it like a linear one. Call it after the
    data is drawn (it reads the axis limits).
    """
    target = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    target.set_major_formatter(plain)
    target.set_minor_formatter(plain if high / max(low, 1e-300) < 30 else NullFormatter())


def _per_position(changes: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor]) -> dict:
    """Return each entry of ``changes`` as a float array, all (T,), or say what to pass."""
    if not changes:
        raise ValueError("changes is empty: pass a dict like {'causal mask': per_position_change}")
    bars = {}
    for label, values in changes.items():
        y = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        bars[label] = np.asarray(y, dtype=np.float64)
    lengths = {label: y.shape for label, y in bars.items()}
    if any(len(shape) != 1 for shape in lengths.values()) or len(set(lengths.values())) != 1:
        raise ValueError(
            f"each entry of changes must be one value per position, all of the same length "
            f"(T,); got shapes {lengths}; reduce the feature axis first, e.g. .abs().amax(-1)"
        )
    return bars


def _shade_positions(ax: Axes, changed: Sequence[int]) -> list:
    """Shade the edited positions, neighbours in one span; return the legend handle (or none)."""
    runs: list[list[int]] = []
    for p in sorted(set(changed)):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    spans = [
        ax.axvspan(first - 0.5, last + 0.5, color="#f2d7a6", alpha=0.6, zorder=0)
        for first, last in runs
    ]
    if spans:
        spans[0].set_label("edited input")
    return spans[:1]


def _series(history: object, name: str) -> np.ndarray:
    values = getattr(history, name, None)
    if values is None:
        raise TypeError(f"history has no {name!r}: pass the History that tfx.training.fit returned")
    return np.asarray(values, dtype=np.float64)


def plot_history(
    history: object,
    title: str = "training curves",
    smooth: int = 1,
    logy: bool = True,
) -> Figure:
    """Draw a training run: the loss per step on the left, the learning rate on the right.

    Shapes:
        history.step, history.loss, history.lr: (N,), one entry per optimizer step;
        history.val_step, history.val_loss (optional): (M,), one entry per validation.

    ``history`` is a ``tfx.training.History`` (or anything with those lists). ``smooth`` > 1
    draws the moving average over that many steps on top of the faint raw loss, so the trend
    shows through the noise of single batches. ``logy`` puts the loss on a base-10 scale.
    Returns the new Figure; ``fig.axes`` are the loss and the learning-rate panels.
    """
    step, loss, lr = (_series(history, name) for name in ("step", "loss", "lr"))
    if step.size == 0:
        raise ValueError("history is empty: train for at least one step first")
    if not step.shape == loss.shape == lr.shape:
        raise ValueError(
            f"history.step, loss and lr must have one entry per step, got lengths "
            f"{step.size}, {loss.size} and {lr.size}"
        )
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be a positive number of steps, got {smooth!r}")
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(9.0, 3.0), layout="constrained")
    if smooth > 1 and step.size >= smooth:
        ax_loss.plot(step, loss, color="C0", alpha=0.25, linewidth=0.8)
        average = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
        ax_loss.plot(step[smooth - 1 :], average, color="C0", label=f"train (mean of {smooth})")
    else:
        ax_loss.plot(step, loss, color="C0", label="train")
    val_step = getattr(history, "val_step", None)
    if val_step is not None and len(val_step) > 0:
        val_loss = _series(history, "val_loss")
        if val_loss.shape != (len(val_step),):
            raise ValueError(
                f"history.val_step has {len(val_step)} entries but val_loss has {val_loss.size}"
            )
        label = "validation" if len(val_step) > 1 else f"validation (step {val_step[0]} only)"
        ax_loss.plot(val_step, val_loss, "o-", color="C1", markersize=6, label=label)
    if logy:
        ax_loss.set_yscale("log")
        label_log_axis(ax_loss)
    ax_loss.set_title("loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy per token")
    ax_loss.legend(frameon=False)
    ax_lr.plot(step, lr, color="C2")
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("lr")
    fig.suptitle(title)
    return fig


def plot_positional_encoding(
    pe: torch.Tensor | np.ndarray,
    ax: Axes | None = None,
    title: str = "positional encodings",
    colorbar: bool = True,
) -> Axes:
    """Draw a table of positional encodings as a heatmap: row = position, column = feature.

    Shapes:
        pe: (max_len, C), or with leading size-1 axes such as (1, max_len, C).

    The colour scale is symmetric around 0 (red positive, blue negative) and spans at
    least [-1, 1], the range of sinusoidal encodings, so tables of different sizes compare.
    """
    pe = _to_numpy(pe, "pe")
    hint = "pass one table, e.g. tfx.layers.sinusoidal_encoding(max_len, d_model)"
    pe = _squeeze_to(pe, 2, "pe", "(max_len, C)", hint).astype(np.float32)
    ax = _new_axes(ax, (5.0, 3.5))
    top = max(1.0, float(np.abs(pe).max())) if pe.size else 1.0
    image = ax.imshow(
        pe, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto", interpolation="nearest"
    )
    ax.set_title(title)
    ax.set_xlabel("feature (column of the table)")
    ax.set_ylabel("position")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


PADDING_COLOUR = "#c8c8c8"  # grey like a blocked mask cell, a little darker to show on white


def plot_padding(
    stats: Mapping[str, object],
    ax: Axes | None = None,
    title: str = "real tokens and padding",
) -> Axes:
    """Draw one bar per batching strategy: its padded slots, split into real tokens and padding.

    Shapes:
        each value of stats: counts ``real_tokens`` and ``padded_tokens`` over all batches,
        e.g. the ``PaddingStats`` that ``tfx.data.padding_stats`` returns.

    Bars run from top to bottom in the order of ``stats``, each labelled with its efficiency
    (real tokens / padded slots). Real tokens are blue and padding grey, as in ``plot_mask``.
    """
    if not stats:
        raise ValueError(
            "stats is empty: pass a dict like {'bucketed': tfx.data.padding_stats(pairs, batches)}"
        )
    names, real, padded = [], [], []
    for name, counts in stats.items():
        n_real = getattr(counts, "real_tokens", None)
        n_padded = getattr(counts, "padded_tokens", None)
        if n_real is None or n_padded is None:
            raise TypeError(
                f"stats[{name!r}] has no real_tokens and padded_tokens: pass what "
                "tfx.data.padding_stats returns"
            )
        if not 0 <= n_real <= n_padded:
            raise ValueError(
                f"stats[{name!r}] counts {n_real} real tokens in {n_padded} padded slots; "
                "real tokens must be between 0 and the number of padded slots"
            )
        names.append(str(name))
        real.append(float(n_real))
        padded.append(float(n_padded))
    real_arr, padded_arr = np.array(real), np.array(padded)
    rows = np.arange(len(names))
    ax = _new_axes(ax, (6.0, 1.2 + 0.5 * len(names)))
    ax.barh(rows, real_arr, color=MASK_COLOURS(1.0), label="real tokens")
    ax.barh(rows, padded_arr - real_arr, left=real_arr, color=PADDING_COLOUR, label="padding")
    for row, (n_real, n_padded) in enumerate(zip(real_arr, padded_arr, strict=True)):
        efficiency = n_real / n_padded if n_padded else 1.0
        ax.text(n_padded, row, f" {efficiency:.0%} real", va="center", fontsize=9)
    ax.set_yticks(rows, names)
    ax.invert_yaxis()  # the first strategy on top
    ax.set_xlim(0, 1.2 * max(float(padded_arr.max()), 1.0))  # room for the labels
    ax.xaxis.set_major_formatter(EngFormatter(sep=" "))  # 500 k, 1 M rather than an offset
    ax.set_title(title)
    ax.set_xlabel("token slots in the padded batches")
    ax.set_ylabel("batching")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return ax


def save_curves(history: History, path: str | os.PathLike, title: str) -> Path:
    """Draw a translation run's training and validation loss and validation BLEU into ``path``.

    Draws on its own ``Figure`` (not pyplot's), so a notebook's figures are left alone.
    """
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    window = max(1, len(history.loss) // 40)  # batches differ in length: average the noise
    smooth = [sum(history.loss[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in range(len(history.loss))]  # fmt: skip
    axes[0].plot(history.step, history.loss, color="C0", alpha=0.25)
    axes[0].plot(
        history.step, smooth, color="C0", label=f"train (label-smoothed, mean of {window})"
    )
    axes[0].plot(history.val_step, history.val_loss, "o-", color="C1", label="validation")
    axes[0].set(title=title, xlabel="step", ylabel="loss per token")
    axes[0].legend()
    bleu = history.val_metrics.get("bleu", [])
    axes[1].plot(history.val_step[: len(bleu)], bleu, "o-")
    axes[1].set(title="greedy BLEU, validation subset", xlabel="step", ylabel="BLEU")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
