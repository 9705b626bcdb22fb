"""The models the Transformer replaced, on the course's contracts: an LSTM and a convolution.

Shapes: B batch, S source length, T target length, C = d_model, V vocabulary size, L layers.

``LSTMSeq2Seq`` is an LSTM encoder-decoder with global attention in the manner of Luong et al.
(2015): a bidirectional LSTM encodes the source, a unidirectional LSTM reads the target, and
every decoder state h_t attends over the encoder states with the "general" score
``h_t^T W_a h_s``, then ``h~_t = tanh(W_c [c_t; h_t])`` predicts the next token. Luong's form
rather than Bahdanau et al.'s (2015): the attention reads the decoder state *after* its step,
so during training the LSTM runs over the whole target in one ``nn.LSTM`` call and attention
is one batched matrix product on top (no input feeding), while Bahdanau's attention enters the
recurrence and needs a Python loop over time steps.

``ConvTransformer`` is the course's ``Transformer`` whose encoder mixes tokens with gated
convolutions (``ConvEncoderLayer``, after Gehring et al. 2017) instead of self-attention; its
decoder is the course's attention decoder, unchanged.

Both satisfy ``decoding.DecodableModel`` (``encode``, ``decode``, ``start_cache``,
``decode_step``) and ``training.TrainableModel``, so ``greedy_decode``, ``beam_search``,
``evaluate_translation`` and ``fit`` run on them unchanged.

The probes turn the paper's Table 1 (Vaswani et al. 2017) into measurements:
``gradient_reach`` (how much gradient reaches input 0 from output t: the path length),
``graph_depth`` (the longest chain of operations that must run one after another) and
``unrolled_lstm`` (an ``nn.LSTM`` layer run one step at a time, so its steps can be counted).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import mask_scores
from tfx_course.layers import (
    EncoderLayer,
    FeedForward,
    LayerNorm,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)
from tfx_course.model import ModelConfig, Transformer, eval_mode
from tfx_course.validation import check_positive_int, check_probability, is_int, shape_str

__all__ = [
    "PROBE_KINDS",
    "MODEL_KINDS",
    "RNNConfig",
    "luong_attention",
    "LuongAttention",
    "LSTMEncoder",
    "LSTMDecoder",
    "LSTMCache",
    "LSTMSeq2Seq",
    "ConvEncoderLayer",
    "ConvEncoder",
    "ConvTransformer",
    "comparison_model",
    "receptive_radius",
    "probe_stack",
    "gradient_reach",
    "graph_depth",
    "unrolled_lstm",
]

PROBE_KINDS = ("transformer", "lstm", "cnn")
MODEL_KINDS = ("transformer", "lstm", "cnn")  # what ``comparison_model`` builds


@dataclass(frozen=True)
class RNNConfig:
    """Sizes of an ``LSTMSeq2Seq``; ``max_len`` and ``pad_id`` are what decoding reads."""

    src_vocab_size: int  # source tokens, including the special ones
    tgt_vocab_size: int  # target tokens, including the special ones
    d_model: int = 256  # embeddings, decoder states, memory (the encoder: d_model // 2 a direction)
    n_encoder_layers: int = 2  # bidirectional LSTM layers
    n_decoder_layers: int = 2  # unidirectional LSTM layers
    dropout: float = 0.1  # on embeddings, between LSTM layers and on the attentional state
    max_len: int = 256  # no position table limits an LSTM: the default cap of generated tokens
    tie_embeddings: bool = False  # the decoder's input embedding shares lm_head's weight
    pad_id: int = 0  # padding token, the same id in both vocabularies

    def __post_init__(self) -> None:
        check_positive_int(
            src_vocab_size=self.src_vocab_size, tgt_vocab_size=self.tgt_vocab_size,
            d_model=self.d_model, n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers, max_len=self.max_len,
        )  # fmt: skip
        if self.d_model % 2 != 0:
            raise ValueError(
                f"d_model={self.d_model} must be even: the bidirectional encoder gives each "
                "direction d_model // 2 features"
            )
        check_probability(self.dropout)
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be True or False, got {self.tie_embeddings!r}")
        smallest = min(self.src_vocab_size, self.tgt_vocab_size)
        if not is_int(self.pad_id) or not 0 <= self.pad_id < smallest:
            raise ValueError(
                f"pad_id={self.pad_id!r} must be a token id of both vocabularies, in [0, {smallest})"
            )


# --- Luong attention ------------------------------------------------------------------


def luong_attention(
    h: Tensor, memory: Tensor, keep: Tensor, score_weight: Tensor, out_weight: Tensor
) -> tuple[Tensor, Tensor]:
    """Return Luong's attentional states tanh(W_c [c_t; h_t]) and the attention weights.

    score(h_t, h_s) = h_t^T W_a h_s with W_a = ``score_weight`` (C, C); the weights are the
    softmax of the scores over the real source positions (``keep``); c_t is their average of
    the memory; W_c = ``out_weight`` (C, 2C) acts on the context first, then h_t.

    Shapes: h (B, T, C), memory (B, S, C), keep (B, S) bool -> (B, T, C), weights (B, T, S).
    """
    keys = memory @ score_weight.T  # (B, S, C): W_a h_s for every source position
    return _attend(h, keys, memory, keep, out_weight)


def _attend(
    h: Tensor, keys: Tensor, memory: Tensor, keep: Tensor, out_weight: Tensor
) -> tuple[Tensor, Tensor]:
    scores = h @ keys.transpose(1, 2)  # (B, T, S)
    weights = mask_scores(scores, keep[:, None, :]).softmax(dim=-1)  # (B, T, S)
    context = weights @ memory  # (B, T, C)
    out = torch.tanh(torch.cat([context, h], dim=-1) @ out_weight.T)  # (B, T, C)
    return out, weights


class LuongAttention(nn.Module):
    """Global attention with the "general" score (Luong et al. 2015), as ``luong_attention``.

    ``score_proj.weight`` is W_a and ``out_proj.weight`` is W_c; neither has a bias, as in the
    paper. ``keys(memory)`` projects the memory once, so a decoding step only adds the scores.

    Shapes: h (B, T, C), keys and memory (B, S, C), keep (B, S) -> (B, T, C), weights (B, T, S).
    """

    def __init__(self, d_model: int):
        super().__init__()
        check_positive_int(d_model=d_model)
        self.score_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(2 * d_model, d_model, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """Return W_a h_s for every source position: (B, S, C)."""
        return self.score_proj(memory)

    def forward(
        self, h: Tensor, keys: Tensor, memory: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor]:
        return _attend(h, keys, memory, keep, self.out_proj.weight)


# --- the LSTM encoder-decoder ---------------------------------------------------------


def _source_lengths(src: Tensor, pad_id: int) -> Tensor:
    """Return each source's number of real tokens (B,), checking that padding comes last."""
    if not isinstance(src, Tensor) or src.dim() != 2:
        got = shape_str(src) if isinstance(src, Tensor) else type(src).__name__
        raise ValueError(f"src must be a (B, S) tensor of token ids, got {got}")
    keep = src != pad_id  # (B, S)
    lengths = keep.sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):
        raise ValueError("every source needs at least one real token; a row is all padding")
    prefix = torch.arange(src.shape[1], device=src.device)[None, :] < lengths[:, None]
    if not torch.equal(keep, prefix):
        raise ValueError(
            f"padding (id {pad_id}) must come after the real tokens of each source "
            "(pad on the right, as tfx.data.pad_sequences does)"
        )
    return lengths


class LSTMEncoder(nn.Module):
    """Embed the source and run a bidirectional LSTM over its real tokens.

    Packing the sequences makes the backward direction start at each source's last real token,
    so padding changes nothing. The memory's first C/2 features are the forward states, the
    last C/2 the backward ones; padded positions are 0.

    Shapes: src (B, S), lengths (B,) -> memory (B, S, C).
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        C = config.d_model
        self.embed = nn.Embedding(config.src_vocab_size, C, padding_idx=config.pad_id)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            C, C // 2, config.n_encoder_layers, batch_first=True, bidirectional=True,
            dropout=config.dropout if config.n_encoder_layers > 1 else 0.0,
        )  # fmt: skip

    def forward(self, src: Tensor, lengths: Tensor) -> Tensor:
        x = self.dropout(self.embed(src))  # (B, S, C)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # fmt: skip
        return memory  # (B, S, C)


class LSTMDecoder(nn.Module):
    """Embed the target, run a unidirectional LSTM from a given state, attend over the memory.

    Shapes: tgt (B, T), state (h, c) each (L, B, C), keys and memory (B, S, C), keep (B, S)
    -> attentional states (B, T, C), the new state and the attention weights (B, T, S).
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        C = config.d_model
        self.embed = nn.Embedding(config.tgt_vocab_size, C, padding_idx=config.pad_id)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            C, C, config.n_decoder_layers, batch_first=True,
            dropout=config.dropout if config.n_decoder_layers > 1 else 0.0,
        )  # fmt: skip
        self.attention = LuongAttention(C)

    def forward(
        self, tgt: Tensor, state: tuple[Tensor, Tensor], keys: Tensor, memory: Tensor, keep: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        h, state = self.lstm(self.dropout(self.embed(tgt)), state)  # (B, T, C)
        out, weights = self.attention(h, keys, memory, keep)  # (B, T, C), (B, T, S)
        return self.dropout(out), state, weights


@dataclass(frozen=True)
class LSTMCache:
    """What ``LSTMSeq2Seq.decode_step`` carries from step to step: the LSTM's state.

    Shapes: h, c (L, B, C), the decoder LSTM's state after the tokens fed so far; keys and
    memory (B, S, C) and keep (B, S), computed once per source.
    """

    h: Tensor
    c: Tensor
    keys: Tensor
    memory: Tensor
    keep: Tensor

    def reorder(self, index: Tensor, memory: bool = True) -> LSTMCache:
        """Return the cache whose row i continues row ``index[i]``; ``memory=False`` keeps the
        source-side tensors as they are (beams of one sentence share them)."""

        def rows(t: Tensor) -> Tensor:
            return t.index_select(0, index) if memory else t

        h, c = self.h.index_select(1, index), self.c.index_select(1, index)
        return LSTMCache(h, c, rows(self.keys), rows(self.memory), rows(self.keep))


class LSTMSeq2Seq(nn.Module):
    """An LSTM encoder-decoder with Luong attention, with the course ``Transformer``'s interface.

    The decoder's first state is tanh(W [forward state at the last real token; backward state
    at the first token]) for every layer, with c = 0.

    Shapes: src (B, S) long, tgt (B, T) long -> logits (B, T, V).
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        C, L = config.d_model, config.n_decoder_layers
        self.encoder = LSTMEncoder(config)
        self.decoder = LSTMDecoder(config)
        self.bridge = nn.Linear(C, L * C)
        self.lm_head = nn.Linear(C, config.tgt_vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.embed.weight

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        return self.decode(tgt, self.encode(src), src)  # (B, T, V)

    def encode(self, src: Tensor) -> Tensor:
        """Run the encoder. Shapes: src (B, S) -> memory (B, S, C)."""
        return self.encoder(src, _source_lengths(src, self.config.pad_id))

    def decode(self, tgt: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """Run the decoder over the whole target (teacher forcing) and the output layer.

        Shapes: tgt (B, T), memory (B, S, C), src (B, S) -> logits (B, T, V).
        """
        logits, _ = self.decode_step(tgt, self.start_cache(memory, src))
        return logits  # (B, T, V)

    def start_cache(self, memory: Tensor, src: Tensor) -> LSTMCache:
        """Return the decoder's first state, with the memory's keys projected once.

        Shapes: memory (B, S, C) from ``encode(src)``, src (B, S) -> a cache before any target.
        """
        lengths = _source_lengths(src, self.config.pad_id)
        if memory.shape[:2] != src.shape:
            raise ValueError(
                f"memory {shape_str(memory)} does not match src {shape_str(src)}: pass the "
                "same src that produced the memory with encode(src)"
            )
        B, S, C = memory.shape
        rows = torch.arange(B, device=memory.device)
        last = torch.cat([memory[rows, lengths - 1, : C // 2], memory[:, 0, C // 2 :]], dim=-1)
        h = torch.tanh(self.bridge(last)).view(B, -1, C).transpose(0, 1).contiguous()  # (L, B, C)
        keys = self.decoder.attention.keys(memory)  # (B, S, C)
        return LSTMCache(h, torch.zeros_like(h), keys, memory, src != self.config.pad_id)

    def decode_step(self, tgt: Tensor, cache: LSTMCache) -> tuple[Tensor, LSTMCache]:
        """Feed the new target tokens from the cached state; return their logits and the new cache.

        Shapes: tgt (B, T) new tokens (T = 1 when decoding) -> logits (B, T, V), equal to the
        last T positions of ``decode`` on the whole prefix.
        """
        if not isinstance(tgt, Tensor) or tgt.dim() != 2 or tgt.shape[0] != cache.h.shape[1]:
            got = shape_str(tgt) if isinstance(tgt, Tensor) else type(tgt).__name__
            raise ValueError(f"tgt must be (B, T) token ids with B={cache.h.shape[1]}, got {got}")
        out, (h, c), _ = self.decoder(tgt, (cache.h, cache.c), cache.keys, cache.memory, cache.keep)  # fmt: skip
        return self.lm_head(out), LSTMCache(h, c, cache.keys, cache.memory, cache.keep)

    @torch.no_grad()
    def attention_weights(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Return the decoder's attention weights (B, T, S) for a given target, in eval mode."""
        with eval_mode(self):
            cache = self.start_cache(self.encode(src), src)
            _, _, weights = self.decoder(tgt, (cache.h, cache.c), cache.keys, cache.memory, cache.keep)  # fmt: skip
        return weights

    @property
    def device(self) -> torch.device:
        """The device the weights are on (where ``greedy_decode`` and ``fit`` move the inputs)."""
        return self.lm_head.weight.device

    def num_parameters(self) -> int:
        """Count the trainable numbers, a tied matrix once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# --- the convolutional encoder --------------------------------------------------------


class ConvEncoderLayer(nn.Module):
    """A Pre-LN encoder layer whose token mixing is a gated convolution instead of attention.

    x + conv block, then x + feed-forward block, as ``EncoderLayer``. The convolution sees
    ``kernel_size`` neighbouring positions (centred); a gated linear unit (GLU: half the
    channels gate the other half, as in ConvS2S) follows it. Padded positions are set to zero
    before the convolution, so they look like the zeros beyond the ends and padding changes
    no real position.

    Shapes: x (B, S, C), mask broadcastable to (B, 1, 1, S) (True = real) -> (B, S, C).
    """

    def __init__(self, d_model: int, d_ff: int, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        check_positive_int(d_model=d_model, d_ff=d_ff, kernel_size=kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd, so the window is centred")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(d_model, 2 * d_model, kernel_size, padding=kernel_size // 2)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)  # (B, S, C)
        if mask is not None:
            h = h * mask.reshape(mask.shape[0], -1)[:, :, None]  # zero the padded positions
        h = F.glu(self.conv(h.transpose(1, 2)), dim=1).transpose(1, 2)  # (B, S, C)
        x = x + self.dropout(h)
        return x + self.dropout(self.ff(self.norm2(x)))  # (B, S, C)


class ConvEncoder(nn.Module):
    """Embed the source, add positions, run ``ConvEncoderLayer``s, normalise: the ``Encoder``
    of a ``Transformer`` with convolutions in place of self-attention.

    Shapes: src (B, S) long, mask (B, 1, 1, S) -> memory (B, S, C).
    """

    def __init__(self, config: ModelConfig, kernel_size: int = 3):
        super().__init__()
        C = config.d_model
        self.embed = TokenEmbedding(config.src_vocab_size, C, config.pad_id)
        self.positional = SinusoidalPositionalEncoding(C, config.max_len, config.dropout)
        self.layers = nn.ModuleList(
            ConvEncoderLayer(C, config.d_ff, kernel_size, config.dropout)
            for _ in range(config.n_encoder_layers)
        )
        self.norm = LayerNorm(C)

    def forward(self, src: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.positional(self.embed(src))  # (B, S, C)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)  # (B, S, C)

    def forward_with_weights(
        self, src: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Return the memory and no attention weights: a convolution has none."""
        return self.forward(src, mask), []


class ConvTransformer(Transformer):
    """The course ``Transformer`` with a convolutional encoder (``ConvEncoder``).

    Everything else (decoder, cross-attention, KV cache, ``decode_step``) is the
    ``Transformer``'s; ``config.n_encoder_layers`` counts convolution layers. Pre-LN only.
    """

    def __init__(self, config: ModelConfig, kernel_size: int = 3):
        if not config.norm_first:
            raise ValueError("ConvTransformer is Pre-LN only: use norm_first=True")
        super().__init__(config)
        self.kernel_size = kernel_size
        self.encoder = ConvEncoder(config, kernel_size)
        for module in self.encoder.modules():  # the Transformer's initialisation, for the new part
            if isinstance(module, nn.Linear | nn.Conv1d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.encoder.embed.embedding.weight, std=config.d_model**-0.5)
        with torch.no_grad():
            self.encoder.embed.embedding.weight[config.pad_id].zero_()


# --- the comparison's models, at about equal parameter counts ----------------------------

# The LSTM's width that gives about the Transformer's parameter count: 243,294 against
# 239,518 with the 30-character vocabulary, 2,466,392 against 2,468,208 with 6,000 subwords.
_LSTM_WIDTH = {"tiny": 84, "course": 146}


def comparison_model(kind: str, vocab_size: int, size: str = "tiny", seed: int = 0) -> nn.Module:
    """Return a seeded "transformer", "lstm" or "cnn" model of one size, all about as large.

    ``size="tiny"``: ``ModelConfig.tiny`` without dropout and with the fused kernels (lesson
    07's toy-task model) for the Transformer and the convolutional encoder, an LSTM of width
    84. ``size="course"``: ``ModelConfig.course`` (the course checkpoint's shape, tied output
    embedding) and an LSTM of width 146 with the same dropout and tying. One vocabulary
    serves both sides.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if size not in _LSTM_WIDTH:
        raise ValueError(f"size must be one of {tuple(_LSTM_WIDTH)}, got {size!r}")
    check_positive_int(vocab_size=vocab_size)
    if size == "tiny":
        config = replace(ModelConfig.tiny(vocab_size, vocab_size), dropout=0.0, fused_attention=True)  # fmt: skip
    else:
        config = ModelConfig.course(vocab_size, vocab_size)
    torch.manual_seed(seed)
    if kind == "transformer":
        return Transformer(config)
    if kind == "cnn":
        return ConvTransformer(config)
    rnn = RNNConfig(vocab_size, vocab_size, d_model=_LSTM_WIDTH[size], dropout=config.dropout,
                    max_len=config.max_len, tie_embeddings=config.tie_embeddings)  # fmt: skip
    return LSTMSeq2Seq(rnn)


# --- probes: the paper's Table 1, measured --------------------------------------------


def receptive_radius(n_layers: int, kernel_size: int) -> int:
    """Return how far a stack of centred convolutions sees on each side: n_layers * (k - 1) / 2."""
    check_positive_int(n_layers=n_layers, kernel_size=kernel_size)
    return n_layers * (kernel_size // 2)


class _Stack(nn.Module):
    """Layers applied one after another to (B, T, C), without masks."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x  # (B, T, C)


class _LSTMStack(nn.Module):
    """A unidirectional ``nn.LSTM`` that returns its outputs only."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, d_model, n_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]  # (B, T, C)


def probe_stack(
    kind: str, d_model: int, n_layers: int, kernel_size: int = 3, n_heads: int = 4, seed: int = 0
) -> nn.Module:
    """Return a seeded stack of ``n_layers`` layers of one family, (B, T, C) -> (B, T, C), in eval mode.

    ``kind``: "transformer" (Pre-LN ``EncoderLayer``, no mask: every position sees every
    other), "lstm" (unidirectional: position t sees positions 0..t) or "cnn"
    (``ConvEncoderLayer`` with ``kernel_size``). Feed-forward width 4 * d_model, no dropout.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}")
    check_positive_int(d_model=d_model, n_layers=n_layers)
    torch.manual_seed(seed)
    if kind == "lstm":
        return _LSTMStack(d_model, n_layers).eval()
    if kind == "transformer":
        layers = [EncoderLayer(d_model, n_heads, 4 * d_model) for _ in range(n_layers)]
    else:
        layers = [ConvEncoderLayer(d_model, 4 * d_model, kernel_size) for _ in range(n_layers)]
    return _Stack(layers).eval()


def gradient_reach(layer: nn.Module, x: Tensor, direction: Tensor | None = None) -> Tensor:
    """Return, for every output position t, the norm of the gradient that reaches input 0.

    g_t = || d(u . y_t) / d x_0 ||, with y = layer(x) and u = ``direction`` (default: a seeded
    random unit vector). All T gradients come from one backward pass: the sequence is copied T
    times, and copy t asks for output t. ``layer`` must treat the rows of a batch separately
    and be deterministic (eval mode, no dropout).

    Shapes: x (1, T, C) -> (T,).
    """
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[0] != 1:
        got = shape_str(x) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be one sequence of shape (1, T, C), got {got}")
    _, T, C = x.shape
    if direction is None:
        gen = torch.Generator().manual_seed(0)
        direction = torch.randn(C, generator=gen, dtype=torch.float64)
        direction = (direction / direction.norm()).to(x)
    copies = x.detach().expand(T, T, C).clone().requires_grad_(True)  # (T, T, C): copy t
    with torch.enable_grad():
        y = layer(copies)  # (T, T, C)
        t = torch.arange(T, device=x.device)
        picked = y[t, t] @ direction  # (T,): u . y_t of copy t
        (grad,) = torch.autograd.grad(picked.sum(), copies)
    return grad[:, 0].norm(dim=-1)  # (T,): the gradient at input 0 of each copy


def graph_depth(output: Tensor) -> int:
    """Return the longest chain of autograd operations from ``output`` back to the inputs.

    The number of steps that must run one after another, however many processors there are:
    the paper's "sequential operations", counted in the recorded computation.
    """
    if not isinstance(output, Tensor) or output.grad_fn is None:
        raise ValueError("output must be a tensor computed from inputs that require grad")
    order, seen, stack = [], set(), [(output.grad_fn, False)]
    while stack:  # iterative depth-first search: long chains would overflow recursion
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((n, False) for n, _ in node.next_functions if n is not None)
    depth: dict = {}
    for node in order:  # children come before their parents in ``order``
        below = [depth[n] for n, _ in node.next_functions if n is not None]
        depth[node] = 1 + max(below, default=0)
    return depth[output.grad_fn]


def unrolled_lstm(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """Run a one-layer, unidirectional, batch-first ``nn.LSTM`` one time step at a time.

    The same numbers as ``lstm(x)[0]`` (from a zero state), computed by the LSTM equations
    with its own weights: i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh);
    c_t = sigma(f) c_{t-1} + sigma(i) tanh(g); h_t = sigma(o) tanh(c_t).

    Shapes: x (B, T, C_in) -> (B, T, C).
    """
    if lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first or lstm.proj_size:
        raise ValueError("unrolled_lstm needs nn.LSTM(..., num_layers=1, batch_first=True)")
    B, T, _ = x.shape
    h = c = x.new_zeros(B, lstm.hidden_size)  # (B, C)
    outputs = []
    for t in range(T):
        gates = F.linear(x[:, t], lstm.weight_ih_l0, lstm.bias_ih_l0)
        gates = gates + F.linear(h, lstm.weight_hh_l0, lstm.bias_hh_l0)  # (B, 4C)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (B, T, C)
