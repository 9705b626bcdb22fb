"""Draw the course's architecture diagrams into notebooks/figures/ (`make notebooks` runs this).

    python tools/diagrams.py             # write every figure
    python tools/diagrams.py --out DIR   # write them elsewhere (the tests compare the two)

The figures are SVG with the text drawn as paths: sharp at any zoom, the same in JupyterLab's
Markdown cells and on a static site, and independent of the fonts a reader has installed.
Coordinates are CSS pixels with y growing downwards; an SVG's width in CSS pixels is its
width in points times 4/3. Running the script twice gives identical files.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

from tfx_course.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "notebooks" / "figures"
PX_PER_INCH = 96  # CSS pixels per inch; matplotlib writes SVG sizes in points (72 per inch)
PT_PER_PX = 0.75
INK = "#222222"
MUTED = "#555555"
STREAM = "#2e7d32"  # the residual stream
MONO = "DejaVu Sans Mono"
# Fill and edge colour of each kind of box.
KINDS = {
    "attn": ("#fde3c8", "#c0651b"),
    "ff": ("#d6e6f5", "#3b75af"),
    "norm": ("#fff2b3", "#a68a00"),
    "embed": ("#dcefd8", "#4a8c3f"),
    "head": ("#e8def3", "#7a55a8"),
    "op": ("#f2f2f2", "#777777"),
    "tensor": ("#ffffff", "#555555"),
}
SHAPE_LETTERS = (
    "B batch · S source length · T target length · C = d_model · H heads · D = C / H · V vocabulary"
)
STYLE = {
    "font.family": "DejaVu Sans",
    "mathtext.fontset": "dejavusans",
    "svg.fonttype": "path",
    "svg.hashsalt": "tfx-course",  # fixed ids for clip paths: identical files on every run
}


def canvas(width: int, height: int) -> tuple[Figure, Axes]:
    """Return a figure of ``width`` x ``height`` CSS pixels whose axes use pixel coordinates."""
    fig = Figure(figsize=(width / PX_PER_INCH, height / PX_PER_INCH))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return fig, ax


def text(ax: Axes, x: float, y: float, s: str, size: float = 15, **kwargs) -> None:
    """Write ``s`` centred on (x, y); ``size`` is in CSS pixels."""
    kwargs = {"ha": "center", "va": "center", "color": INK, **kwargs}
    ax.text(x, y, s, fontsize=size * PT_PER_PX, **kwargs)


def box(
    ax: Axes,
    xy: tuple[float, float],
    size: tuple[float, float],
    name: str,
    note: str = "",
    kind: str = "op",
) -> None:
    """Draw a rounded box centred on ``xy``: ``name`` in code type, ``note`` below it in plain."""
    (x, y), (w, h) = xy, size
    fill, edge = KINDS[kind]
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=7",
                           facecolor=fill, edgecolor=edge, linewidth=1.6)  # fmt: skip
    ax.add_patch(patch)
    if note:
        text(ax, x, y - 9, name, family=MONO)
        text(ax, x, y + 10, note, size=13, color=MUTED)
    else:
        text(ax, x, y, name, family=MONO)


def arrow(
    ax: Axes,
    *points: tuple[float, float],
    colour: str = INK,
    width: float = 1.6,
    dashed: bool = False,
) -> None:
    """Draw a line through ``points`` with an arrowhead at the last one."""
    style = (0, (4, 3)) if dashed else "solid"
    if len(points) > 2:
        xs, ys = zip(*points[:-1], strict=True)
        ax.plot(xs, ys, color=colour, linewidth=width, linestyle=style, solid_joinstyle="miter")
    head = FancyArrowPatch(points[-2], points[-1], arrowstyle="-|>", mutation_scale=14,
                           color=colour, linewidth=width, linestyle=style,
                           shrinkA=0, shrinkB=0)  # fmt: skip
    ax.add_patch(head)


def plus(ax: Axes, x: float, y: float, colour: str = STREAM) -> None:
    """Draw the residual addition, a circled plus."""
    ax.add_patch(Circle((x, y), 10, facecolor="white", edgecolor=colour, linewidth=1.8))
    text(ax, x, y - 1, "+", size=18, color=colour, fontweight="bold")


def group(ax: Axes, left: float, top: float, right: float, bottom: float, label: str) -> None:
    """Draw the grey frame of a repeated layer with its label in the top left corner."""
    patch = FancyBboxPatch((left, top), right - left, bottom - top, facecolor="#f7f7f7",
                           edgecolor="#999999", linewidth=1.2, linestyle=(0, (5, 3)),
                           boxstyle="round,pad=0,rounding_size=10")  # fmt: skip
    ax.add_patch(patch)
    text(ax, left + 12, top + 16, label, size=15, ha="left", family=MONO, fontweight="bold")


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as SVG without a date or version stamp, atomically."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return atomic_write_text(path, buffer.getvalue())


# --- (a) the whole encoder-decoder ---------------------------------------------------------


BRANCH_PITCH = 100  # vertical distance between two sublayers' additions
STREAM_BOX = (186, 44)


def residual_branch(
    ax: Axes, stream_x: float, y: float, side: int, norm: str | None, sub: tuple[str, str, str]
) -> tuple[float, float]:
    """Draw one sublayer beside the residual stream, its ``+`` at height ``y``.

    ``side`` is +1 for a branch to the right of the stream, -1 to the left. ``norm`` names
    the LayerNorm in front of the sublayer (Pre-LN), or is None (Post-LN, whose norm sits on
    the stream). ``sub`` is the sublayer's (name, note, kind). Returns the centre of the
    sublayer box's outer edge.
    """
    norm_x, sub_w = stream_x + side * 66, 170
    sub_x = norm_x + side * (32 + 16 + sub_w / 2)
    mid, low = y + 42, y + 76
    if norm is None:
        arrow(ax, (stream_x, low), (sub_x, low), (sub_x, mid + 22))
    else:
        arrow(ax, (stream_x, low), (norm_x, low), (norm_x, mid + 15))
        box(ax, (norm_x, mid), (64, 30), norm, kind="norm")
        arrow(ax, (norm_x + side * 32, mid), (sub_x - side * sub_w / 2, mid))
    box(ax, (sub_x, mid), (sub_w, 44), sub[0], sub[1], kind=sub[2])
    arrow(ax, (sub_x, mid - 22), (sub_x, y), (stream_x + side * 10, y))
    plus(ax, stream_x, y)
    return sub_x + side * sub_w / 2, mid


def stack(ax: Axes, x: float, bottom: float, side: int, parts: dict) -> dict[str, tuple]:
    """Draw one side of the model from its input tokens (at ``bottom``) upwards.

    ``parts`` holds "prefix" ("encoder" or "decoder"), "input" (name, note), "layer" (the
    frame's label), "branches" ((norm, sublayer) pairs) and "outputs" (boxes above the final
    norm). Returns each sublayer box's outer edge and the top box's centre.
    """
    prefix, places = parts["prefix"], {}
    box(ax, (x, bottom), (STREAM_BOX[0], 34), *parts["input"], kind="tensor")
    box(ax, (x, bottom - 66), STREAM_BOX, f"{prefix}.embed", "× √d_model", kind="embed")
    box(ax, (x, bottom - 130), STREAM_BOX, f"{prefix}.positional", "+ PE(pos), dropout", "embed")
    arrow(ax, (x, bottom - 17), (x, bottom - 44))
    arrow(ax, (x, bottom - 88), (x, bottom - 108))
    frame_bottom = bottom - 152 - 18
    ys = [frame_bottom - 92 - BRANCH_PITCH * i for i in range(len(parts["branches"]))]
    top, outer = ys[-1] - 44, x + side * 296
    edges = sorted((x - side * 75, outer))
    group(ax, edges[0], top, edges[1], frame_bottom, parts["layer"])
    arrow(ax, (x, bottom - 152), (x, ys[0] + 10), colour=STREAM, width=2.4)
    for i, (y, (norm, sub)) in enumerate(zip(ys, parts["branches"], strict=True)):
        places[sub[0]] = residual_branch(ax, x, y, side, norm, sub)
        if i:
            arrow(ax, (x, ys[i - 1] - 10), (x, y + 10), colour=STREAM, width=2.4)
    y = top - 36
    arrow(ax, (x, ys[-1] - 10), (x, y + 17), colour=STREAM, width=2.4)
    box(ax, (x, y), (STREAM_BOX[0], 34), f"{prefix}.norm", kind="norm")
    for name, note, kind in parts["outputs"]:
        arrow(ax, (x, y - 17), (x, y - 40))
        y -= 62
        box(ax, (x, y), STREAM_BOX, name, note, kind)
    places["top"] = (x, y)
    return places


def draw_transformer() -> Figure:
    """The encoder-decoder Transformer as `tfx.model.Transformer` builds it (Pre-LN)."""
    fig, ax = canvas(864, 846)
    text(ax, 432, 22, "The encoder–decoder Transformer (tfx.model.Transformer, Pre-LN)",
         size=18, fontweight="bold")  # fmt: skip
    encoder = stack(ax, 105, 740, +1, {
        "prefix": "encoder",
        "input": ("src", "(B, S) token ids"),
        "layer": "EncoderLayer × n_encoder_layers",
        "branches": [("norm1", ("self_attn", "source padding mask", "attn")),
                     ("norm2", ("ff", "Linear → ReLU → Linear", "ff"))],
        "outputs": [("memory", "(B, S, C)", "tensor")],
    })  # fmt: skip
    decoder = stack(ax, 759, 740, -1, {
        "prefix": "decoder",
        "input": ("tgt_in", "(B, T): <bos> y₁ … yₙ"),
        "layer": "DecoderLayer × n_decoder_layers",
        "branches": [("norm1", ("self_attn", "causal & padding mask", "attn")),
                     ("norm2", ("cross_attn", "keys, values: memory", "attn")),
                     ("norm3", ("ff", "Linear → ReLU → Linear", "ff"))],
        "outputs": [("lm_head", "Linear(C → V): logits", "head"),
                    ("softmax", "p(next token) (B, T, V)", "head")],
    })  # fmt: skip
    (mx, my), (cx, cy), lane = encoder["top"], decoder["cross_attn"], 432
    arrow(ax, (mx + STREAM_BOX[0] / 2, my), (lane, my), (lane, cy), (cx, cy))
    text(ax, mx + STREAM_BOX[0] / 2 + 8, my - 12, "to every DecoderLayer", size=13,
         color=MUTED, ha="left")  # fmt: skip
    for i, line in enumerate(NORM_NOTE):
        text(ax, 14, 66 + 19 * i, line, size=13, color=MUTED, ha="left")
    legend(ax, 796)
    text(ax, 20, 826, SHAPE_LETTERS, size=13, color=MUTED, ha="left")
    return fig


NORM_NOTE = (
    "Pre-LN (norm_first=True), the course's default.",
    "Post-LN (norm_first=False) moves each norm",
    "after its +, and drops encoder.norm and",
    "decoder.norm: see the Pre-LN / Post-LN figure.",
)


# --- (b) one multi-head attention, with shapes ------------------------------------------------


def draw_attention() -> Figure:
    """The data flow of `tfx.attention.MultiHeadAttention`, with the shape after every step."""
    fig, ax = canvas(864, 850)
    text(ax, 432, 22, "Multi-head attention step by step (tfx.attention.MultiHeadAttention)",
         size=18, fontweight="bold")  # fmt: skip
    text(ax, 432, 50, "self-attention: query = key = value = x, so S = T;   "
         "cross-attention: key = value = memory", size=13, color=MUTED)  # fmt: skip
    columns = {"q": 190, "k": 432, "v": 674}
    names = {"q": ("query", "T"), "k": ("key", "S"), "v": ("value", "S")}
    for role, x in columns.items():
        name, length = names[role]
        box(ax, (x, 90), (200, 34), name, f"(B, {length}, C)", kind="tensor")
        arrow(ax, (x, 107), (x, 148))
        box(ax, (x, 170), (200, 44), f"{role}_proj", "nn.Linear(C, C)", kind="attn")
        arrow(ax, (x, 192), (x, 224))
        box(ax, (x, 246), (226, 44), "split_heads", f"{role}: (B, H, {length}, D)", kind="op")
    chain_x, top = 311, 330
    arrow(ax, (columns["q"], 268), (columns["q"], 288), (chain_x - 40, 288), (chain_x - 40, 308))
    arrow(ax, (columns["k"], 268), (columns["k"], 288), (chain_x + 40, 288), (chain_x + 40, 308))
    steps = [
        ("q @ k.transpose(-2, -1) / √D", "scores (B, H, T, S)", "attn"),
        ("mask_scores", "blocked → finfo(dtype).min", "op"),
        ("softmax(dim=-1)", "weights (B, H, T, S), rows sum to 1", "attn"),
        ("weights @ v", "(B, H, T, D)", "attn"),
        ("merge_heads", "transpose(1, 2).reshape → (B, T, C)", "op"),
        ("out_proj", "nn.Linear(C, C)", "attn"),
    ]
    for i, (name, note, kind) in enumerate(steps):
        y = top + 76 * i
        box(ax, (chain_x, y), (300, 44), name, note, kind)
        if i:
            arrow(ax, (chain_x, y - 54), (chain_x, y - 22))
    arrow(ax, (columns["v"], 268), (columns["v"], top + 228), (chain_x + 150, top + 228))
    arrow(ax, (chain_x, top + 402), (chain_x, top + 439))
    box(ax, (chain_x, top + 456), (200, 34), "out", "(B, T, C)", kind="tensor")
    mask_inset(ax, (22, top + 42), top + 76)
    for i, line in enumerate(HEAD_NOTE):
        text(ax, 692, top + 20 * i, line, size=13, color=MUTED, ha="left")
    text(ax, 20, 830, SHAPE_LETTERS, size=13, color=MUTED, ha="left")
    return fig


HEAD_NOTE = (
    "The H heads run side",
    "by side: head h uses",
    "its own slice of D",
    "features, q[:, h],",
    "k[:, h] and v[:, h];",
    "merge_heads lays the",
    "H results side by side",
    "again for out_proj.",
)


def mask_inset(ax: Axes, corner: tuple[float, float], target_y: float) -> None:
    """Draw a small causal-and-padding mask and an arrow from it into the masking step."""
    x0, y0 = corner
    cell, size, real = 16, 5, 4  # the last key is padding
    for t in range(size):
        for s in range(size):
            allowed = s <= t and s < real
            colour = "#3b75af" if allowed else "#e6e6e6"
            ax.add_patch(Rectangle((x0 + s * cell, y0 + t * cell), cell, cell,
                                   facecolor=colour, edgecolor="white", linewidth=1))  # fmt: skip
    text(ax, x0, y0 - 26, "mask (bool)", size=13, ha="left", family=MONO)
    text(ax, x0, y0 - 10, "True = may attend", size=13, ha="left", color=MUTED)
    text(ax, x0, y0 + size * cell + 14, "causal, last key", size=13, ha="left", color=MUTED)
    text(ax, x0, y0 + size * cell + 30, "is padding;", size=13, ha="left", color=MUTED)
    text(ax, x0, y0 + size * cell + 46, "→ (B, H, T, S)", size=13, ha="left", color=MUTED)
    arrow(ax, (x0 + size * cell + 4, target_y), (161, target_y))


def legend(ax: Axes, y: float) -> None:
    """Explain the colours and the shape letters along the bottom of a figure."""
    entries = [("attention", "attn"), ("feed-forward", "ff"), ("LayerNorm", "norm"),
               ("embedding, positions", "embed"), ("output", "head")]  # fmt: skip
    x = 20
    for label, kind in entries:
        fill, edge = KINDS[kind]
        ax.add_patch(Rectangle((x, y - 8), 16, 16, facecolor=fill, edgecolor=edge, linewidth=1.4))
        text(ax, x + 22, y, label, size=13, ha="left")
        x += 32 + 7.6 * len(label)
    ax.plot([x + 4, x + 34], [y, y], color=STREAM, linewidth=2.4)
    text(ax, x + 40, y, "residual stream", size=13, ha="left")


# --- (c) Post-LN and Pre-LN ----------------------------------------------------------------


def draw_norm_placement() -> Figure:
    """One EncoderLayer wired Post-LN and Pre-LN, side by side."""
    fig, ax = canvas(864, 700)
    ax.plot([432, 432], [10, 640], color="#cccccc", linewidth=1.2)
    panels = [(100, None, "Post-LN (norm_first=False)", r"$x_{l+1} = \mathrm{LN}(x_l + f(x_l))$",
               POST_LN_NOTE), (532, "norm", "Pre-LN (norm_first=True)",
               r"$x_{l+1} = x_l + f(\mathrm{LN}(x_l))$", PRE_LN_NOTE)]  # fmt: skip
    for x, pre, title, equation, note in panels:
        text(ax, x + 116, 24, title, size=18, fontweight="bold")
        text(ax, x + 116, 56, equation, size=17)
        box(ax, (x, 600), (150, 34), "x", "(B, S, C)", kind="tensor")
        arrow(ax, (x, 583), (x, 497), colour=STREAM, width=2.4)
        residual_branch(ax, x, 487, +1, pre and "norm1", ("self_attn", "padding mask", "attn"))
        residual_branch(ax, x, 324, +1, pre and "norm2", ("ff", "Linear → ReLU → Linear", "ff"))
        if pre:
            arrow(ax, (x, 477), (x, 334), colour=STREAM, width=2.4)
            arrow(ax, (x, 314), (x, 231), colour=STREAM, width=2.4)
            box(ax, (x, 150), (186, 44), "encoder.norm", "once, after the last layer", "norm")
            arrow(ax, (x, 197), (x, 172), colour=STREAM, width=2.4, dashed=True)
        else:
            stream_norm(ax, x, 437, 477, 334, "norm1")
            stream_norm(ax, x, 274, 314, 231, "norm2")
            text(ax, x, 142, "no final norm: every layer", size=13, color=MUTED)
            text(ax, x, 160, "already ends in norm2", size=13, color=MUTED)
        box(ax, (x, 214), (150, 34), "out", "(B, S, C)", kind="tensor")
        for i, line in enumerate(note):
            text(ax, x - 80, 650 + 19 * i, line, size=13, color=MUTED, ha="left")
    return fig


POST_LN_NOTE = (
    "The original paper's layout and PyTorch's default.",
    "Every path down the stack passes a LayerNorm;",
    "at a high learning rate it needs warmup (lesson 04).",
)
PRE_LN_NOTE = (
    "The course's default, and GPT-2's. The stream is the",
    "identity from the output to every layer; one more",
    "LayerNorm ends the stack. Trains without warmup.",
)


def stream_norm(ax: Axes, x: float, y: float, below: float, above: float, name: str) -> None:
    """Draw a Post-LN norm sitting on the residual stream, with the stream in and out of it."""
    arrow(ax, (x, below), (x, y + 17), colour=STREAM, width=2.4)
    box(ax, (x, y), (150, 34), name, kind="norm")
    arrow(ax, (x, y - 17), (x, above), colour=STREAM, width=2.4)


# --- (d) the KV cache ------------------------------------------------------------------------

CACHED, NEW, MEMORY = "#9cc3e6", "#f0a35e", "#a8d5a0"


def grid(ax: Axes, x: float, y: float, columns: int, colours: Sequence[str]) -> None:
    """Draw a (D, columns) block of cells, top left at (x, y), one colour per column."""
    cell, rows = 15, 4
    for c in range(columns):
        for r in range(rows):
            ax.add_patch(Rectangle((x + c * cell, y + r * cell), cell, cell,
                                   facecolor=colours[c], edgecolor="white", linewidth=1))  # fmt: skip


def draw_kv_cache() -> Figure:
    """What one DecoderLayer's KVCache holds at each decoding step."""
    fig, ax = canvas(864, 660)
    text(ax, 432, 22, "The KV cache of one DecoderLayer during decoding (Transformer.decode_step)",
         size=18, fontweight="bold")  # fmt: skip
    headers = [(60, "step t"), (160, "token fed"), (400, "self_k, self_v  (B, H, t, D)"),
               (700, "cross_k, cross_v  (B, H, S, D)")]  # fmt: skip
    for x, label in headers:
        text(ax, x, 70, label, family=MONO)
    text(ax, 400, 92, "self-attention: one new column per step", size=13, color=MUTED)
    text(ax, 700, 92, "cross-attention: projected once from memory", size=13, color=MUTED)
    tokens = ["<bos>", "A", "man", "is"]
    for t, token in enumerate(tokens, start=1):
        y = 130 + 95 * (t - 1)
        text(ax, 60, y + 30, f"{t}", size=17)
        box(ax, (160, y + 30), (90, 34), token, kind="tensor")
        arrow(ax, (205, y + 30), (300, y + 30))
        colours = [CACHED] * (t - 1) + [NEW]
        for x, name in ((330, "K"), (440, "V")):
            text(ax, x - 8, y + 30, name, size=14, family=MONO, ha="right")
            grid(ax, x, y, t, colours)
        for x, name in ((630, "K"), (745, "V")):
            text(ax, x - 8, y + 30, name, size=14, family=MONO, ha="right")
            grid(ax, x, y, 6, [MEMORY] * 6)
        cross = "cross_attn.k_proj, v_proj (memory)" if t == 1 else "reused as it is"
        text(ax, 700, y + 74, cross, size=13, color=MUTED)
    legend_y = 520
    entries = [(NEW, "computed at this step: self_attn.k_proj, v_proj of the new position"),
               (CACHED, "read from the cache"),
               (MEMORY, "projected from the encoder's memory before step 1 (start_cache)")]  # fmt: skip
    for i, (colour, label) in enumerate(entries):
        ax.add_patch(Rectangle((30, legend_y + 22 * i - 8), 16, 16, facecolor=colour))
        text(ax, 54, legend_y + 22 * i, label, size=13, ha="left")
    for i, line in enumerate(KV_NOTE):
        text(ax, 30, legend_y + 76 + 19 * i, line, size=13, color=MUTED, ha="left")
    return fig


KV_NOTE = (
    "Each column is one position's D features, for each of the H heads. The new token's query "
    "attends over",
    "the t keys, its own included; none lies in the future, so no causal mask is needed. "
    "Transformer.start_cache",
    "builds a DecoderCache (one KVCache per decoder layer); decode_step returns it one column "
    "longer.",
)


# --- (e) the LSTM encoder-decoder of lesson 13 -------------------------------------------------


def draw_lstm_seq2seq() -> Figure:
    """`tfx.baselines.LSTMSeq2Seq`: a bidirectional LSTM encoder, an LSTM decoder, Luong attention."""
    fig, ax = canvas(864, 640)
    text(ax, 432, 24, "LSTMSeq2Seq: an LSTM encoder-decoder with Luong attention",
         size=18, fontweight="bold")  # fmt: skip
    source, xs = ["<bos>", "ein", "Hund", "<eos>"], [70, 170, 270, 370]
    group(ax, 22, 310, 418, 500, "encoder")
    for i, (x, token) in enumerate(zip(xs, source, strict=True)):
        box(ax, (x, 555), (84, 32), token, kind="tensor")
        arrow(ax, (x, 539), (x, 478))
        box(ax, (x, 455), (84, 44), "LSTM", "→  ←", kind="ff")
        arrow(ax, (x, 433), (x, 382))
        box(ax, (x, 362), (70, 38), f"$\\bar h_{i + 1}$", kind="tensor")
        if i:
            arrow(ax, (xs[i - 1] + 42, 445), (x - 42, 445))  # forward recurrence
            arrow(ax, (x - 42, 466), (xs[i - 1] + 42, 466))  # backward recurrence
    target, outputs, ds = ["<bos>", "a", "dog"], ["a", "dog", "<eos>"], [530, 660, 790]
    group(ax, 468, 100, 850, 500, "decoder")
    for i, (x, token) in enumerate(zip(ds, target, strict=True)):
        box(ax, (x, 555), (84, 32), token, kind="tensor")
        arrow(ax, (x, 539), (x, 478))
        box(ax, (x, 455), (84, 44), "LSTM", f"$h_{i + 1}$", kind="ff")
        arrow(ax, (x, 433), (x, 384))
        box(ax, (x, 362), (110, 44), "attention", f"$\\tilde h_{i + 1}$", kind="attn")
        arrow(ax, (x, 340), (x, 254))
        box(ax, (x, 232), (100, 44), "lm_head", "logits", kind="head")
        arrow(ax, (x, 210), (x, 176))
        box(ax, (x, 160), (84, 32), outputs[i], kind="tensor")
        if i:
            arrow(ax, (ds[i - 1] + 42, 455), (x - 42, 455), colour=STREAM, width=2.4)
    for x in xs:  # every step attends over every memory vector; drawn for the last step
        arrow(ax, (x + 28, 343), (x + 28, 296), (ds[-1] - 30, 296), (ds[-1] - 30, 340), colour=MUTED,
              width=1.0, dashed=True)  # fmt: skip
    arrow(
        ax, (xs[-1] + 42, 490), (440, 490), (440, 470), (ds[0] - 42, 470), colour=STREAM, width=2.4
    )
    text(ax, 444, 512, "bridge", size=13, color=STREAM, ha="left")
    for i, line in enumerate(LSTM_NOTE):
        text(ax, 22, 592 + 18 * i, line, size=13, color=MUTED, ha="left")
    return fig


LSTM_NOTE = (
    "Every arrow between two LSTM boxes is one step that must wait for the previous one. Green: "
    "the decoder's recurrence,",
    "and the bridge that starts it from the encoder's final states. Dashed (drawn for the last "
    "step only): attention reads",
    "every h̄_s; score h_tᵀ W_a h̄_s over the real source positions, softmax, context c_t, "
    "then h̃_t = tanh(W_c [c_t; h_t]).",
)


FIGURE_MAKERS: dict[str, Callable[[], Figure]] = {
    "transformer.svg": draw_transformer,
    "attention.svg": draw_attention,
    "pre_post_ln.svg": draw_norm_placement,
    "kv_cache.svg": draw_kv_cache,
    "lstm_seq2seq.svg": draw_lstm_seq2seq,
}


def write_figures(out: Path = FIGURES) -> list[Path]:
    """Draw every figure into ``out`` and return the paths written."""
    written = []
    with matplotlib.rc_context(STYLE):
        for name, make in FIGURE_MAKERS.items():
            written.append(save(make(), out / name))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder to write the SVGs to")
    args = parser.parse_args(argv)
    for path in write_figures(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
