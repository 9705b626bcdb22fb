"""Interpretability: switch heads off, roll attention out, attribute an output to the source tokens.

Shapes: B batch, S source length, T target length, C = d_model, H heads, D = d_head,
L layers. The attention weights themselves come from ``Transformer.attention_maps``, whose
keys ``ATTENTION_KINDS`` name the three kinds of attention; this module reads and changes
the model around them:

- ``head_mask`` and ``mask_heads`` zero chosen heads' outputs inside a ``with`` block, the
  gate of Michel et al. (2019), whichever attention path (fused, step by step, KV cache) runs;
- ``attention_rollout`` multiplies the layers' head-averaged weights, each mixed with the
  identity for the residual path (Abnar and Zuidema, 2020);
- ``input_x_gradient`` and ``integrated_gradients`` (Sundararajan et al., 2017) attribute a
  score to the inputs of any differentiable function; ``log_prob_from_embeddings`` makes the
  function for a translation model (one output token's log-probability as a function of the
  source token embeddings) and ``source_attributions`` runs it for every output token;
- ``attention_table_html`` writes one attention matrix as an HTML table whose cells show their
  weight on hover, for an interactive explorer that needs no plotting library.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from tfx_course.attention import MultiHeadAttention
from tfx_course.model import Transformer, eval_mode, source_mask, target_mask
from tfx_course.validation import check_positive_int, is_int, shape_str

__all__ = [
    "ATTENTION_KINDS",
    "attention_module",
    "all_heads",
    "head_mask",
    "mask_heads",
    "attention_rollout",
    "input_x_gradient",
    "integrated_gradients",
    "source_embeddings",
    "replaced_source_embeddings",
    "log_prob_from_embeddings",
    "source_attributions",
    "attention_table_html",
]

# The keys of Transformer.attention_maps, in the order of the forward pass.
ATTENTION_KINDS = ("encoder", "decoder_self", "cross")

Head = tuple[str, int, int]  # (kind, layer, head), e.g. ("cross", 1, 3)


def attention_module(model: Transformer, kind: str, layer: int) -> MultiHeadAttention:
    """Return the attention module whose weights are ``model.attention_maps(...)[kind][layer]``."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    stack = model.encoder.layers if kind == "encoder" else model.decoder.layers
    if not is_int(layer) or not 0 <= layer < len(stack):
        raise ValueError(f"{kind} attention has layers 0..{len(stack) - 1}, got layer={layer!r}")
    return stack[layer].cross_attn if kind == "cross" else stack[layer].self_attn


def all_heads(model: Transformer) -> list[Head]:
    """Return every (kind, layer, head) of ``model``, in the order of ``ATTENTION_KINDS``."""
    n_layers = {
        "encoder": model.config.n_encoder_layers,
        "decoder_self": model.config.n_decoder_layers,
        "cross": model.config.n_decoder_layers,
    }
    return [
        (kind, layer, head)
        for kind in ATTENTION_KINDS
        for layer in range(n_layers[kind])
        for head in range(model.config.n_heads)
    ]


@contextmanager
def head_mask(attention: MultiHeadAttention, heads: int | Iterable[int]) -> Iterator[None]:
    """Zero the outputs of ``heads`` of one attention module inside a ``with`` block.

    Head h's output is the slice ``h * D:(h + 1) * D`` of what enters ``out_proj``; a
    pre-hook on ``out_proj`` multiplies that slice by 0, so the module returns
    ``out_proj`` of the other heads only (its bias stays). The weights that
    ``attention_maps`` reports do not change: the head still looks, its answer is dropped.
    """
    if not isinstance(attention, MultiHeadAttention):
        raise TypeError(
            f"head_mask needs a MultiHeadAttention, got {type(attention).__name__}; "
            "tfx.interpret.attention_module(model, kind, layer) finds one in a Transformer"
        )
    if not is_int(heads) and not isinstance(heads, Iterable):
        raise TypeError(f"heads must be a head index or a list of them, got {heads!r}")
    heads = [heads] if is_int(heads) else list(heads)
    bad = [h for h in heads if not is_int(h) or not 0 <= h < attention.n_heads]
    if bad:
        raise ValueError(f"heads must be in 0..{attention.n_heads - 1}, got {bad}")
    keep = torch.ones(attention.n_heads, attention.d_head)  # (H, D)
    keep[heads] = 0.0
    keep = keep.flatten()  # (C,): head h owns features h * D .. (h + 1) * D - 1

    def gate(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = inputs[0]  # (B, T, C): the heads' outputs side by side, before out_proj
        return (x * keep.to(device=x.device, dtype=x.dtype), *inputs[1:])

    handle = attention.out_proj.register_forward_pre_hook(gate)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def mask_heads(model: Transformer, heads: Iterable[Head]) -> Iterator[None]:
    """Zero several heads of ``model`` at once; each head is ``(kind, layer, head)``."""
    by_module: dict[tuple[str, int], list[int]] = {}
    for item in heads:
        if not (isinstance(item, tuple | list) and len(item) == 3):
            raise ValueError(f"each head must be (kind, layer, head), got {item!r}")
        kind, layer, head = item
        by_module.setdefault((kind, layer), []).append(head)
    with ExitStack() as stack:
        for (kind, layer), chosen in by_module.items():
            stack.enter_context(head_mask(attention_module(model, kind, layer), chosen))
        yield


def attention_rollout(weights: Sequence[Tensor], residual: float = 0.5) -> Tensor:
    """Return attention rollout: the layers' attention, each mixed with the identity, multiplied.

    Shapes: weights, one per layer, first layer first, (B, H, S, S) (averaged over heads) or
    (B, S, S) -> (B, S, S). Layer l's matrix is ``residual * I + (1 - residual) * A_l`` with
    rows renormalised to 1; rollout is ``A'_L @ ... @ A'_1``. Row i says how much of
    position i's last hidden state traces back to each input token (Abnar and Zuidema,
    2020). ``residual=0`` multiplies the raw weights.
    """
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"residual must be in [0, 1), got {residual!r}")
    if len(weights) == 0:
        raise ValueError("attention_rollout needs the weights of at least one layer")
    rollout = None
    for layer, w in enumerate(weights):
        if w.dim() not in (3, 4) or w.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"layer {layer}: expected self-attention weights (B, H, S, S) or (B, S, S), "
                f"got {shape_str(w)}"
            )
        a = w.mean(dim=1) if w.dim() == 4 else w  # (B, S, S)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # (S, S)
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # (B, S, S)
    return rollout


def _check_scores(scores: Tensor, n: int, what: str) -> None:
    if not isinstance(scores, Tensor) or scores.shape != (n,):
        got = shape_str(scores) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"forward must return one score per row, shape ({n},), got {got} {what}")


def input_x_gradient(forward: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """Return inputs * d forward(inputs) / d inputs, one attribution per input number.

    Shapes: inputs (B, ...); ``forward`` maps (N, ...) to (N,) scores, each row on its own
    -> attributions (B, ...). Rows must not interact (eval mode, no batch statistics).
    """
    x = inputs.detach().requires_grad_(True)
    scores = forward(x)
    _check_scores(scores, x.shape[0], "for the inputs")
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return (x * grad).detach()


def integrated_gradients(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    baselines: Tensor | None = None,
    steps: int = 32,
) -> Tensor:
    """Return integrated gradients along the straight path from ``baselines`` to ``inputs``.

    (x - x') times the mean gradient at the midpoints x' + (k - 1/2)/m (x - x'), k = 1..m:
    the midpoint Riemann sum of Sundararajan et al.'s (2017) path integral; Captum's
    ``method="riemann_middle"``. The attributions add up to about
    ``forward(inputs) - forward(baselines)`` (completeness). Shapes: inputs and baselines
    (B, ...), zeros by default; ``forward`` maps (N, ...) to (N,) and is called once, on all
    m * B path points (step-major) -> attributions (B, ...).
    """
    check_positive_int(steps=steps)
    x = inputs.detach()
    base = torch.zeros_like(x) if baselines is None else baselines.detach().to(x)
    if base.shape != x.shape:
        raise ValueError(f"baselines {shape_str(base)} must have the inputs' shape {shape_str(x)}")
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps  # (m,)
    alphas = alphas.view(steps, *[1] * x.dim())  # (m, 1, ...) broadcasts over (B, ...)
    path = (base + alphas * (x - base)).flatten(0, 1).requires_grad_(True)  # (m * B, ...)
    scores = forward(path)
    _check_scores(scores, path.shape[0], f"for {steps} steps x {x.shape[0]} inputs")
    (grad,) = torch.autograd.grad(scores.sum(), path)
    mean_grad = grad.view(steps, *x.shape).mean(dim=0)  # (B, ...)
    return ((x - base) * mean_grad).detach()


def source_embeddings(model: Transformer, src: Tensor) -> Tensor:
    """Return the source token embeddings (B, S, C) that the attributions explain.

    What ``model.encoder.embed`` outputs: the looked-up vectors times sqrt(d_model), before
    the positional encoding is added. The padding token's vector is all zeros.
    """
    with torch.no_grad():
        return model.encoder.embed(src)  # (B, S, C)


@contextmanager
def replaced_source_embeddings(model: Transformer, embeddings: Tensor) -> Iterator[None]:
    """Make ``model`` use ``embeddings`` as its source token embeddings inside a ``with`` block.

    Shapes: embeddings (N, S, C), in place of ``source_embeddings(model, src)``; call the model
    with N source sequences of length S (they still give the padding mask). A forward hook on
    ``model.encoder.embed`` returns them, as Captum's layer attributions do.
    """
    handle = model.encoder.embed.register_forward_hook(lambda module, args, out: embeddings)
    try:
        yield
    finally:
        handle.remove()


def log_prob_from_embeddings(
    model: Transformer, src: Tensor, tgt_in: Tensor, targets: Tensor, position: int
) -> Callable[[Tensor], Tensor]:
    """Return f(embeddings) -> log p(targets[:, position]) with the source embeddings replaced.

    Shapes: src (B, S) gives the padding mask, tgt_in (B, T) the decoder's input (teacher
    forcing), targets (B, T) the tokens scored; f maps embeddings (N, S, C), N = k * B
    (k copies of the batch, step-major, as ``integrated_gradients`` passes them), to (N,).
    The model runs in eval mode (no dropout); gradients flow into the embeddings only.
    """
    if src.dim() != 2 or tgt_in.dim() != 2 or targets.shape != tgt_in.shape:
        raise ValueError(
            f"expected src (B, S), tgt_in and targets (B, T), got {shape_str(src)}, "
            f"{shape_str(tgt_in)}, {shape_str(targets)}"
        )
    if not is_int(position) or not 0 <= position < tgt_in.shape[1]:
        raise ValueError(f"position must be in 0..{tgt_in.shape[1] - 1}, got {position!r}")
    B = src.shape[0]

    def forward(embeddings: Tensor) -> Tensor:
        k, rest = divmod(embeddings.shape[0], B)
        if rest or embeddings.shape[1:] != (src.shape[1], model.config.d_model):
            raise ValueError(
                f"embeddings must be (k * {B}, {src.shape[1]}, {model.config.d_model}), "
                f"got {shape_str(embeddings)}"
            )
        src_k, pad_id = src.repeat(k, 1), model.config.pad_id  # (N, S)
        # Causal: the tokens after `position` cannot change it, so the decoder reads the prefix
        # only, and the output layer (V columns) runs on the one scored position.
        prefix = tgt_in[:, : position + 1].repeat(k, 1)  # (N, position + 1)
        with eval_mode(model), replaced_source_embeddings(model, embeddings):
            memory = model.encode(src_k)  # (N, S, C)
            self_mask, memory_mask = target_mask(prefix, pad_id), source_mask(src_k, pad_id)
            hidden = model.decoder(prefix, memory, self_mask, memory_mask)  # (N, position + 1, C)
        log_probs = model.lm_head(hidden[:, -1]).log_softmax(dim=-1)  # (N, V)
        return log_probs.gather(1, targets[:, position].repeat(k)[:, None]).squeeze(1)  # (N,)

    return forward


def source_attributions(
    model: Transformer,
    src: Tensor,
    tgt_in: Tensor,
    targets: Tensor,
    method: str = "integrated_gradients",
    steps: int = 32,
) -> Tensor:
    """Attribute each target token's log-probability to the source tokens.

    Shapes: src (B, S), tgt_in and targets (B, T) -> (B, T, S): row t holds, for each
    source token, its attribution summed over the C embedding features (a signed number).
    ``method`` is "integrated_gradients" (from all-zero embeddings, the padding vector, in
    ``steps`` steps) or "input_x_gradient".
    """
    if method not in ("integrated_gradients", "input_x_gradient"):
        raise ValueError(f'method must be "integrated_gradients" or "input_x_gradient", got {method!r}')  # fmt: skip
    embeddings = source_embeddings(model, src)  # (B, S, C)
    rows = []
    for t in range(tgt_in.shape[1]):
        forward = log_prob_from_embeddings(model, src, tgt_in, targets, t)
        if method == "input_x_gradient":
            attributions = input_x_gradient(forward, embeddings)  # (B, S, C)
        else:
            attributions = integrated_gradients(forward, embeddings, steps=steps)
        rows.append(attributions.sum(dim=-1))  # (B, S)
    return torch.stack(rows, dim=1)  # (B, T, S)


def _cell_colour(weight: float) -> str:
    """Return a white-to-blue background for a weight in [0, 1], and a readable text colour."""
    w = min(max(weight, 0.0), 1.0)
    red, green = round(255 - 196 * w), round(255 - 138 * w)
    ink = "#ffffff" if w > 0.55 else "#000000"
    return f"background:rgb({red},{green},175);color:{ink}"


def attention_table_html(
    weights: Tensor, x_labels: Sequence[str], y_labels: Sequence[str], caption: str = ""
) -> str:
    """Write one attention matrix as an HTML table: a heatmap whose cells show their weight on hover.

    Shapes: weights (T, S), row t = query t. Each cell's ``title`` reads
    "query -> key: weight", which a browser shows as a tooltip; labels are HTML-escaped.
    """
    if weights.dim() != 2:
        raise ValueError(f"weights must be one (T, S) matrix, got {shape_str(weights)}")
    T, S = weights.shape
    if len(x_labels) != S or len(y_labels) != T:
        raise ValueError(
            f"weights {shape_str(weights)} need {S} key labels and {T} query labels, got "
            f"{len(x_labels)} and {len(y_labels)}"
        )
    keys = [html.escape(label) for label in x_labels]
    queries = [html.escape(label) for label in y_labels]
    style = "padding:1px 3px;font:11px monospace;text-align:center"
    head = "".join(f'<th style="{style};writing-mode:vertical-rl">{k}</th>' for k in keys)
    lines = [f'<table style="border-collapse:collapse"><caption>{html.escape(caption)}</caption>']
    lines.append(f"<tr><th></th>{head}</tr>")
    for t, query in enumerate(queries):
        cells = []
        for s, key in enumerate(keys):
            w = float(weights[t, s])
            title = f"{query} -&gt; {key}: {w:.3f}"
            cells.append(
                f'<td title="{title}" style="{style};{_cell_colour(w)}">{100 * w:.0f}</td>'
            )
        lines.append(f'<tr><th style="{style};text-align:right">{query}</th>{"".join(cells)}</tr>')
    lines.append("</table>")
    return "\n".join(lines)
