"""The course's blocks in the two other Transformer families: a decoder-only language model and
an encoder-only Vision Transformer, with what it takes to train and sample them.

Shapes: B batch, T positions, C = d_model, V vocabulary size, N patches, K classes.

``DecoderOnlyLM`` is a stack of self-attention blocks with a causal mask and no encoder: with
the classic settings each block computes exactly ``tfx_course.layers.EncoderLayer`` (Pre-LN)
under a causal mask, and its parameters carry the same names. ``LMConfig`` swaps in the modern
pieces of ``tfx_course.modern`` one at a time: RoPE, RMSNorm, SwiGLU, grouped-query attention,
a sliding window or linear attention. ``VisionTransformer`` cuts an image into patches, embeds
each as a token, prepends a class token and classifies from it after ``EncoderLayer``s.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from tfx_course.data.batching import pad_sequences
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from tfx_course.layers import (
    EncoderLayer,
    FeedForward,
    LayerNorm,
    LearnedPositionalEncoding,
    NoPositionalEncoding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)
from tfx_course.modern import GroupedQueryAttention, RMSNorm, SwiGLU, sliding_window_mask
from tfx_course.training import History, TrainConfig, make_optimizer, make_scheduler
from tfx_course.validation import check_positive_int, check_probability, shape_str

__all__ = [
    "LMConfig",
    "LMBlock",
    "DecoderOnlyLM",
    "lm_batches",
    "lm_loss",
    "evaluate_lm",
    "top_k_filter",
    "sample",
    "ViTConfig",
    "patchify",
    "unpatchify",
    "VisionTransformer",
    "NeedleTask",
    "needle_loss",
    "needle_accuracy",
    "train_steps",
]

POSITIONALS = ("sinusoidal", "learned", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
FFNS = ("relu", "gelu", "swiglu")
ATTENTIONS = ("full", "sliding", "linear")


@dataclass(frozen=True)
class LMConfig:
    """A decoder-only language model; the defaults are the classic (2017) block, Pre-LN."""

    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (multi-head), 1 = multi-query
    n_layers: int = 2
    d_ff: int = 256  # hidden width of the feed-forward network
    max_len: int = 128  # longest sequence the positional table covers (not used by RoPE)
    dropout: float = 0.0
    positional: str = "sinusoidal"  # "sinusoidal", "learned", "rope" or "none"
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    ffn: str = "relu"  # "relu", "gelu" or "swiglu"
    attention: str = "full"  # "full", "sliding" (the window latest positions) or "linear"
    window: int = 16  # positions a query sees with attention="sliding", itself included
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        check_positive_int(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads)
        check_positive_int(n_layers=self.n_layers, d_ff=self.d_ff, max_len=self.max_len)
        check_positive_int(window=self.window)
        check_probability(self.dropout)
        for name, value, allowed in [
            ("positional", self.positional, POSITIONALS),
            ("norm", self.norm, NORMS),
            ("ffn", self.ffn, FFNS),
            ("attention", self.attention, ATTENTIONS),
        ]:
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def d_head(self) -> int:
        """Features per head: d_model // n_heads."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads, n_kv_heads or n_heads."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


def _norm(config: LMConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, fused=True)
    return LayerNorm(config.d_model, fused=True)


def _ffn(config: LMConfig) -> nn.Module:
    if config.ffn == "swiglu":
        return SwiGLU(config.d_model, config.d_ff, config.dropout)
    return FeedForward(config.d_model, config.d_ff, config.dropout, config.ffn)


class LMBlock(nn.Module):
    """One decoder-only block, Pre-LN: x + attn(norm1(x)), then x + ff(norm2(x)).

    Shapes: x (B, T, C), mask broadcastable to (B, H, T, T) -> (B, T, C). The causal rule is
    applied inside (``causal=True`` of the attention), so ``mask`` adds rules such as a window.
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.self_attn = GroupedQueryAttention(
            config.d_model,
            config.n_heads,
            config.kv_heads,
            config.dropout,
            rope=config.positional == "rope",
            kernel="linear" if config.attention == "linear" else "softmax",
        )
        self.ff = _ffn(config)
        self.norm1, self.norm2 = _norm(config), _norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        h, _ = self.self_attn(h, h, h, mask, causal=True)  # (B, T, C)
        x = x + self.dropout(h)
        return x + self.dropout(self.ff(self.norm2(x)))  # (B, T, C)


class DecoderOnlyLM(nn.Module):
    """A language model: token embedding, positions, ``LMBlock``s, a final norm, tied output layer.

    Shapes: tokens (B, T) long -> logits (B, T, V); position t predicts token t + 1 and sees
    only tokens 0..t. The output layer shares the embedding's matrix (tied embeddings).
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config.vocab_size, config.d_model, config.pad_id)
        nn.init.normal_(self.embed.embedding.weight, std=config.d_model**-0.5)
        with torch.no_grad():
            self.embed.embedding.weight[config.pad_id].zero_()
        self.positional = _positional(config)
        self.layers = nn.ModuleList(LMBlock(config) for _ in range(config.n_layers))
        self.norm = _norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {shape_str(tokens)}")
        x = self.positional(self.embed(tokens))  # (B, T, C)
        mask = None
        if self.config.attention == "sliding":
            mask = sliding_window_mask(tokens.shape[1], self.config.window, device=tokens.device)
        for layer in self.layers:
            x = layer(x, mask)  # (B, T, C)
        return self.lm_head(self.norm(x))  # (B, T, V)

    def num_parameters(self) -> int:
        """Count the trainable numbers, the tied matrix once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device


def _positional(config: LMConfig) -> nn.Module:
    if config.positional == "sinusoidal":
        return SinusoidalPositionalEncoding(config.d_model, config.max_len, config.dropout)
    if config.positional == "learned":
        return LearnedPositionalEncoding(config.d_model, config.max_len, config.dropout)
    return NoPositionalEncoding(config.dropout)  # "none", and "rope": positions act in attention


# --- language-model data, loss and sampling -----------------------------------------------


def lm_batches(
    texts: Sequence[str], tokenizer: Tokenizer, batch_size: int, max_len: int, seed: int = 0
) -> list[Tensor]:
    """Encode each text as <bos> ... <eos>, cut to ``max_len`` tokens, and pad batches of them.

    Returns a list of (B, L) long tensors, L <= max_len; texts of similar length share a batch
    (sorted by length, then the batches shuffled with ``seed``), so little is padding.
    """
    check_positive_int(batch_size=batch_size, max_len=max_len)
    encoded = sorted((tokenizer.encode(t)[:max_len] for t in texts), key=len)
    batches = [
        pad_sequences(encoded[i : i + batch_size], PAD_ID)
        for i in range(0, len(encoded), batch_size)
    ]
    random.Random(seed).shuffle(batches)
    return batches


def lm_loss(model: nn.Module, tokens: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """Return the mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1], pads ignored."""
    logits = model(tokens[:, :-1])  # (B, T - 1, V)
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=pad_id)


@torch.no_grad()
def evaluate_lm(model: nn.Module, batches: Sequence[Tensor], pad_id: int = PAD_ID) -> float:
    """Return the cross-entropy per predicted token over all batches (exp of it is perplexity)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for tokens in batches:
        n = int((tokens[:, 1:] != pad_id).sum())
        total += lm_loss(model, tokens, pad_id).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the ``k`` largest logits of each row and set the others to -inf (None keeps all).

    Shapes: logits (..., V) -> (..., V). Ties with the k-th largest are kept.
    """
    if k is None:
        return logits
    check_positive_int(k=k)
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


@torch.no_grad()
def sample(
    model: DecoderOnlyLM,
    n: int,
    max_new: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` sequences from <bos>, token by token, from softmax(logits / temperature).

    Returns (n, L) long ids without <bos>, with <pad> after each sequence's <eos>. Temperature
    below 1 sharpens the distribution, above 1 flattens it; ``top_k`` keeps only the k likeliest.
    """
    check_positive_int(n=n, max_new=max_new)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}; use top_k=1 for greedy")
    was_training = model.training
    model.eval()
    tokens = torch.full((n, 1), BOS_ID, device=model.device)  # (n, 1)
    finished = torch.zeros(n, dtype=torch.bool, device=model.device)
    for _ in range(max_new):
        logits = model(tokens[:, -model.config.max_len :])[:, -1] / temperature  # (n, V)
        probs = top_k_filter(logits, top_k).softmax(dim=-1)
        next_token = torch.multinomial(probs.cpu(), 1, generator=generator).to(tokens.device)
        next_token = next_token.squeeze(1).masked_fill(finished, PAD_ID)  # (n,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (n, t + 1)
        finished |= next_token == EOS_ID
        if finished.all():
            break
    model.train(was_training)
    return tokens[:, 1:]


# --- the Vision Transformer -----------------------------------------------------------------


@dataclass(frozen=True)
class ViTConfig:
    """An encoder-only Vision Transformer for small images (the defaults fit 8x8 digits)."""

    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    n_classes: int = 10
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_positive_int(image_size=self.image_size, patch_size=self.patch_size)
        check_positive_int(channels=self.channels, n_classes=self.n_classes, d_ff=self.d_ff)
        check_positive_int(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers)
        check_probability(self.dropout)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                "the patches must tile the image"
            )

    @property
    def n_patches(self) -> int:
        """Patches per image: (image_size / patch_size) ** 2."""
        return (self.image_size // self.patch_size) ** 2


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into square patches, row by row, each flattened (channel, row, column).

    Shapes: images (B, Cin, H, W) -> (B, N, Cin * P * P) with N = (H / P) * (W / P).
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, channels, H, W), got {shape_str(images)}")
    B, Cin, Hgt, Wid = images.shape
    P = patch_size
    if Hgt % P or Wid % P:
        raise ValueError(f"image size {Hgt}x{Wid} is not divisible by patch_size={P}")
    x = images.reshape(B, Cin, Hgt // P, P, Wid // P, P)  # (B, Cin, rows, P, cols, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, Cin, P, P)
    return x.reshape(B, (Hgt // P) * (Wid // P), Cin * P * P)  # (B, N, Cin * P * P)


def unpatchify(patches: Tensor, patch_size: int, image_size: int, channels: int = 1) -> Tensor:
    """Undo ``patchify``: (B, N, Cin * P * P) -> (B, Cin, H, W) for square images."""
    B, N, _ = patches.shape
    P, side = patch_size, image_size // patch_size
    if N != side * side:
        raise ValueError(f"{N} patches do not tile a {image_size}x{image_size} image")
    x = patches.reshape(B, side, side, channels, P, P)  # (B, rows, cols, Cin, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, Cin, rows, P, cols, P)
    return x.reshape(B, channels, image_size, image_size)


class VisionTransformer(nn.Module):
    """Patches as tokens, a class token in front, ``EncoderLayer``s, a classifier on the class token.

    Shapes: images (B, Cin, H, W) -> logits (B, K). Positions are learned (one vector for the
    class token and one per patch), as in Dosovitskiy et al. (2021); Pre-LN with a final norm.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Linear(c.channels * c.patch_size**2, c.d_model)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.positional = LearnedPositionalEncoding(c.d_model, c.n_patches + 1, c.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(
                c.d_model, c.n_heads, c.d_ff, c.dropout, fused_attention=True, fused_norm=True
            )  # fmt: skip
            for _ in range(c.n_layers)
        )
        self.norm = LayerNorm(c.d_model, fused=True)
        self.head = nn.Linear(c.d_model, c.n_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(patchify(images, self.config.patch_size))  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = self.positional(torch.cat([cls, x], dim=1))  # (B, N + 1, C)
        for layer in self.layers:
            x = layer(x)  # (B, N + 1, C): no mask, every patch sees every patch
        return self.head(self.norm(x[:, 0]))  # (B, K): read from the class token only


# --- a task that needs long range: find the needle ----------------------------------------


@dataclass(frozen=True)
class NeedleTask:
    """Sequences of noise tokens hiding one needle token; at the last position, name the needle.

    Ids: the four special tokens, ``n_noise`` noise tokens, ``n_needles`` needle tokens, then
    the query token that ends every sequence. A model must carry the needle from wherever it
    lies to the last position, so a window shorter than that distance cannot succeed: it can
    only guess, right 1 time in ``n_needles``.
    """

    length: int = 48  # tokens per sequence, the query included
    n_noise: int = 16
    n_needles: int = 8

    def __post_init__(self) -> None:
        check_positive_int(length=self.length, n_noise=self.n_noise, n_needles=self.n_needles)
        if self.length < 2:
            raise ValueError(
                f"length must leave room for a needle and the query, got {self.length}"
            )

    @property
    def first_needle(self) -> int:
        """The id of needle 0; needles are first_needle .. first_needle + n_needles - 1."""
        return 4 + self.n_noise

    @property
    def query_id(self) -> int:
        return self.first_needle + self.n_needles

    @property
    def vocab_size(self) -> int:
        return self.query_id + 1

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``n`` sequences (n, length), their needles (n,) and the needles' distances (n,).

        The distance is how many positions before the query the needle lies (1 .. length - 1),
        uniform over the sequence; the same seed gives the same sequences.
        """
        check_positive_int(n=n)
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(4, self.first_needle, (n, self.length), generator=gen)
        needles = torch.randint(0, self.n_needles, (n,), generator=gen) + self.first_needle
        position = torch.randint(0, self.length - 1, (n,), generator=gen)
        tokens[torch.arange(n), position] = needles
        tokens[:, -1] = self.query_id
        return tokens, needles, self.length - 1 - position


def needle_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Return the cross-entropy of naming the needle at the last position of each sequence."""
    tokens, needles = batch
    return F.cross_entropy(model(tokens)[:, -1], needles)


@torch.no_grad()
def needle_accuracy(
    model: nn.Module, tokens: Tensor, needles: Tensor, distance: Tensor, edges: Sequence[int]
) -> list[float]:
    """Return the share of needles named right, for distances in [edges[i], edges[i + 1]).

    Shapes: tokens (n, length), needles (n,), distance (n,) from ``NeedleTask.sample``.
    """
    was_training = model.training
    model.eval()
    right = model(tokens)[:, -1].argmax(dim=-1) == needles  # (n,)
    model.train(was_training)
    shares = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (distance >= low) & (distance < high)
        shares.append(right[inside].float().mean().item() if inside.any() else float("nan"))
    return shares


# --- one training loop for both families ---------------------------------------------------


def train_steps(
    model: nn.Module,
    batches: Sequence,
    loss_fn: Callable[[nn.Module, object], Tensor],
    config: TrainConfig,
    progress: bool = False,
    evaluate: Callable[[nn.Module], float] | None = None,
) -> History:
    """Train for ``config.max_steps`` AdamW steps over ``batches`` (reshuffled every epoch).

    ``loss_fn(model, batch)`` returns the loss of one batch; the learning rate follows
    ``config``'s warmup and schedule, and the gradient norm is clipped to ``config.clip_norm``.
    ``evaluate(model)``, if given, is recorded as the validation loss every ``config.eval_every``
    steps and at the end.
    """
    if not batches:
        raise ValueError("train_steps needs at least one batch")
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    history, order, rng = History(), [], random.Random(config.seed)
    max_norm = config.clip_norm if config.clip_norm is not None else math.inf
    model.train()
    for step in tqdm(range(1, config.max_steps + 1), desc="train", disable=not progress):
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        lr = optimizer.param_groups[0]["lr"]
        loss = loss_fn(model, batches[order.pop()])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        history.record(step, loss.item(), lr, grad_norm.item())
        due = config.eval_every and step % config.eval_every == 0 or step == config.max_steps
        if evaluate is not None and due:
            history.record_validation(step, evaluate(model))
            model.train()
    return history
