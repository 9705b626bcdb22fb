"""Decoding with a preallocated KV cache, and CUDA graphs that replay its steps on a GPU.

The decoders of ``tfx_course.decoding`` grow the cache by one position a step (``torch.cat``)
and launch every kernel of every layer from Python. On a CPU the arithmetic dominates and the
cache pays; on a GPU a step of a small model is so short that launching its few hundred
kernels takes longer than running them, so a step costs about the same whatever the prefix.

Here the cache is allocated once for ``max_len`` positions (``Transformer.start_static_cache``)
and each step writes its keys and values in place at a position held in a tensor
(``Transformer.static_decode_step``): every step has the same shapes and touches the same
memory. That makes it capturable: with ``graphs=True`` (CUDA only) the step is recorded once as
a CUDA graph and then replayed, one launch a step instead of hundreds. Greedy decoding and
beam search run their usual loops (``decoding``) over this step, so they give the same tokens
as the eager decoders (tested on the CPU, where ``graphs=False``).

Shapes: B batch, S source length, L generated length, V vocabulary size, K beam size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from tfx_course.data.batching import pad_sequences
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, Tokenizer

# The loops and checks of the eager decoders, reused so that both paths decide alike.
from tfx_course.decoding import (
    DecodableModel,
    _beam_loop,
    _check_src,
    _decode_length,
    _greedy_loop,
)
from tfx_course.layers import StaticDecoderCache
from tfx_course.model import eval_mode
from tfx_course.validation import check_positive_int

__all__ = [
    "StaticDecodableModel",
    "StaticDecoder",
    "capture_cuda_graph",
    "greedy_decode_static",
    "beam_search_static",
]


class StaticDecodableModel(DecodableModel, Protocol):
    """A ``DecodableModel`` with a preallocated cache (the course's ``Transformer`` is one)."""

    def start_static_cache(
        self, memory: Tensor, src: Tensor, length: int
    ) -> StaticDecoderCache: ...

    def static_decode_step(self, tgt: Tensor, cache: StaticDecoderCache) -> Tensor: ...


def capture_cuda_graph(
    step: Callable[[], Tensor], restore: Callable[[], None], warmup: int = 2
) -> Callable[[], Tensor]:
    """Record ``step`` as a CUDA graph; return a function that replays it and returns its output.

    ``step`` must read and write only tensors that stay in place (the graph replays the same
    kernels on the same addresses). It runs ``warmup`` times on a side stream first (PyTorch's
    recipe: lazy initialisations happen outside the capture); then ``restore()`` undoes what
    those runs changed, so the first replay is the first step.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    restore()

    def replay() -> Tensor:
        graph.replay()
        return out

    return replay


class _StaticStepper:
    """``decoding._Stepper``'s interface over a static cache: next-token logits of each prefix.

    Rows are the ``k`` copies of each source sentence (k beams; 1 for greedy), made at the start.
    """

    def __init__(
        self, model: StaticDecodableModel, src: Tensor, length: int, k: int, graphs: bool
    ) -> None:
        self.model, self.length, self.k = model, length, k
        self.src = self._rows(src)  # (B * k, S)
        memory = model.encode(self.src)  # (B * k, S, C)
        self.cache = model.start_static_cache(memory, self.src, length)
        self.tokens = self.src.new_zeros(self.src.shape[0], 1)  # (B * k, 1): the step's input
        self.step = self._step
        if graphs:
            saved = self.cache.clone()
            self.step = capture_cuda_graph(self._step, lambda: self.cache.load_(saved))

    def _rows(self, src: Tensor) -> Tensor:
        index = torch.arange(src.shape[0], device=src.device).repeat_interleave(self.k)
        return src.to(self.model.device)[index.to(self.model.device)]

    def _step(self) -> Tensor:
        return self.model.static_decode_step(self.tokens, self.cache)  # (B * k, 1, V)

    def restart(self, src: Tensor) -> None:
        """Start decoding ``src`` (same shape as before) in the same buffers and graph."""
        self.src.copy_(self._rows(src))
        memory = self.model.encode(self.src)
        self.cache.load_(self.model.start_static_cache(memory, self.src, self.length))

    def next_logits(self, tokens: Tensor) -> Tensor:
        """Return the logits (N, V) that follow each prefix in tokens (N, t)."""
        self.tokens.copy_(tokens[:, -1:])
        return self.step()[:, -1]  # (N, V)

    def reorder(self, index: Tensor) -> None:
        """Follow the beams: row i now continues row index[i] (of the same sentence)."""
        self.cache.reorder_(index)


class StaticDecoder:
    """Greedy decoding and beam search through a preallocated cache, as CUDA graphs with ``graphs``.

    Keeps the buffers (and the graph) of the last shape it decoded: batches of the same shape
    (rows, source length, ``max_len``, beams) reuse them, a new shape rebuilds them. Outputs
    are those of ``decoding.greedy_decode`` and ``decoding.beam_search``. ``pad_to`` rounds the
    source length up to a multiple (padding the source changes no output) so that batches of
    similar lengths share one shape.
    """

    def __init__(self, model: StaticDecodableModel, graphs: bool = False, pad_to: int = 8) -> None:
        check_positive_int(pad_to=pad_to)
        if graphs and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, not {model.device}")
        self.model, self.graphs, self.pad_to = model, graphs, pad_to
        self._stepper: _StaticStepper | None = None
        self._key: tuple[int, ...] | None = None
        self.captures = 0  # how many shapes were built (each one a capture with graphs)

    def _stepper_for(self, src: Tensor, length: int, k: int) -> _StaticStepper:
        key = (*src.shape, length, k)
        if self._stepper is not None and key == self._key:
            self._stepper.restart(src)
        else:
            self._stepper = None  # free the old buffers and graph first
            self._stepper = _StaticStepper(self.model, src, length, k, self.graphs)
            self._key, self.captures = key, self.captures + 1
        return self._stepper

    def _prepare(self, src: Tensor, max_len: int | None, pad_id: int | None) -> tuple:
        _check_src(src)
        pad_id = self.model.config.pad_id if pad_id is None else pad_id
        S = src.shape[1]
        width = min(-(-S // self.pad_to) * self.pad_to, max(S, self.model.config.max_len))
        if width > S:  # extra padding columns: hidden by the source mask
            src = torch.cat([src, src.new_full((src.shape[0], width - S), pad_id)], dim=1)
        return src, _decode_length(self.model, max_len), pad_id

    @torch.no_grad()
    def greedy(
        self,
        src: Tensor,
        max_len: int | None = None,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
        pad_id: int | None = None,
    ) -> Tensor:
        """Return ``decoding.greedy_decode``'s tokens. Shapes: src (B, S) -> (B, L)."""
        src, max_len, pad_id = self._prepare(src, max_len, pad_id)
        with eval_mode(self.model):
            stepper = self._stepper_for(src, max_len, 1)
            return _greedy_loop(stepper, bos_id, eos_id, max_len, pad_id)[:, 1:]

    @torch.no_grad()
    def beam(
        self,
        src: Tensor,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        max_len: int | None = None,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
        pad_id: int | None = None,
    ) -> Tensor:
        """Return ``decoding.beam_search``'s tokens. Shapes: src (B, S) -> (B, L)."""
        check_positive_int(beam_size=beam_size)
        if length_penalty < 0:
            raise ValueError(f"length_penalty={length_penalty} must be >= 0 (0: no penalty)")
        src, max_len, pad_id = self._prepare(src, max_len, pad_id)
        with eval_mode(self.model):
            stepper = self._stepper_for(src, max_len, beam_size)
            ids = (bos_id, eos_id, pad_id)
            return _beam_loop(stepper, src.shape[0], beam_size, length_penalty, max_len, ids)

    def translate(
        self,
        model: StaticDecodableModel,
        texts: Sequence[str],
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        max_len: int | None = None,
        batch_size: int = 256,
        beam_size: int | None = None,
        length_penalty: float = 0.6,
        use_cache: bool = True,
    ) -> list[str]:
        """``decoding.translate`` on this decoder's model (``use_cache`` is always true here)."""
        if model is not self.model:
            raise ValueError("StaticDecoder.translate decodes with the model it was built for")
        outputs: list[str] = []
        pad_id = model.config.pad_id
        bos_id, eos_id = tgt_tokenizer.bos_id, tgt_tokenizer.eos_id
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            src = pad_sequences([src_tokenizer.encode(t, add_special=True) for t in chunk], pad_id)
            if beam_size is None:
                ids = self.greedy(src, max_len, bos_id, eos_id, pad_id)
            else:
                ids = self.beam(src, beam_size, length_penalty, max_len, bos_id, eos_id, pad_id)
            outputs.extend(tgt_tokenizer.decode(row.tolist()) for row in ids.cpu())
        return outputs


def greedy_decode_static(
    model: StaticDecodableModel,
    src: Tensor,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    max_len: int | None = None,
    pad_id: int | None = None,
    graphs: bool = False,
) -> Tensor:
    """``decoding.greedy_decode`` through a preallocated cache (``graphs``: as a CUDA graph)."""
    return StaticDecoder(model, graphs).greedy(src, max_len, bos_id, eos_id, pad_id)


def beam_search_static(
    model: StaticDecodableModel,
    src: Tensor,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    max_len: int | None = None,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int | None = None,
    graphs: bool = False,
) -> Tensor:
    """``decoding.beam_search`` through a preallocated cache (``graphs``: as CUDA graphs)."""
    decoder = StaticDecoder(model, graphs)
    return decoder.beam(src, beam_size, length_penalty, max_len, bos_id, eos_id, pad_id)
