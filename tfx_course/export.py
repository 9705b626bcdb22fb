"""The model as programs other runtimes can run: torch.export, ONNX (onnxruntime), ExecuTorch.

Shapes: B batch, S source length, t target positions decoded so far, L decoder layers,
H heads, D = d_head, V vocabulary size.

A translator is split into two programs with plain tensors in and out, the form every
runtime accepts:

- the **encoder program**: ``src (B, S)`` -> the cross-attention keys and values of every
  decoder layer, ``cross_k, cross_v (L, B, H, S, D)`` (what ``Transformer.start_cache`` keeps);
- the **decoder step**: ``token (B, 1), src (B, S), self_k, self_v (L, B, H, t, D), cross_k,
  cross_v`` -> ``logits (B, V)`` of the next token and the caches grown to ``t + 1`` positions.

The KV cache is an input and an output of the step: the program keeps no state, and the loop
that feeds it (``greedy_translate``) is ordinary Python, the same for PyTorch, onnxruntime and
ExecuTorch. A finished row keeps getting padding, as in ``decoding.greedy_decode``; since a
live row never holds padding before its EOS, the step needs no target padding mask, and one
new token attends to every cached position, so it needs no causal mask either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tfx_course.data.tokenizers import BOS_ID, EOS_ID
from tfx_course.layers import KVCache
from tfx_course.model import Transformer, source_mask
from tfx_course.quantize import quiet_imports
from tfx_course.validation import check_positive_int

__all__ = [
    "EncoderProgram",
    "DecoderStepProgram",
    "ExportedTranslator",
    "export_translator",
    "Runner",
    "eager_runner",
    "greedy_translate",
    "max_difference",
    "to_onnx",
    "OnnxRunner",
    "to_executorch",
    "ExecuTorchRunner",
]

MAX_BATCH = 64  # the largest batch the exported programs accept (ExecuTorch plans memory for it)

# A program: tensors in, a tuple of tensors out (an eager module, onnxruntime, ExecuTorch).
Runner = Callable[..., tuple[Tensor, ...]]


class EncoderProgram(nn.Module):
    """Encode the source and project every decoder layer's cross-attention keys and values.

    Shapes: src (B, S) -> cross_k, cross_v (L, B, H, S, D).
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor]:
        memory = self.model.encode(src)  # (B, S, C)
        caches = self.model.decoder.start_cache(memory)  # one KVCache per layer
        cross_k = torch.stack([c.cross_k for c in caches])  # (L, B, H, S, D)
        return cross_k, torch.stack([c.cross_v for c in caches])


class DecoderStepProgram(nn.Module):
    """Decode one token per row from the KV cache; return its logits and the grown cache.

    Shapes: token (B, 1), src (B, S), self_k and self_v (L, B, H, t, D), cross_k and cross_v
    (L, B, H, S, D) -> logits (B, V), self_k and self_v (L, B, H, t + 1, D).
    """

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(
        self, token: Tensor, src: Tensor, self_k: Tensor, self_v: Tensor, cross_k: Tensor,
        cross_v: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        layers = range(self_k.shape[0])
        caches = tuple(KVCache(self_k[i], self_v[i], cross_k[i], cross_v[i]) for i in layers)
        memory_mask = source_mask(src, self.model.config.pad_id)  # (B, 1, 1, S)
        offset = self_k.shape[3]  # t: the new token's position
        x, grown = self.model.decoder.step(token, caches, offset, None, memory_mask)  # (B, 1, C)
        logits = self.model.lm_head(x[:, -1])  # (B, V)
        return (
            logits,
            torch.stack([c.self_k for c in grown]),
            torch.stack([c.self_v for c in grown]),
        )


@dataclass(frozen=True)
class ExportedTranslator:
    """The two exported programs of a translator (``torch.export.ExportedProgram`` each)."""

    encoder: torch.export.ExportedProgram
    step: torch.export.ExportedProgram


def _example_inputs(model: Transformer) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Return a source batch and step inputs (sizes above 1, so export keeps them symbolic)."""
    c = model.config
    src = torch.full((2, 5), BOS_ID + 3, dtype=torch.long)  # (B, S)
    L, H, D = c.n_decoder_layers, c.n_heads, c.d_head
    # Four separate tensors: inputs that are one object would be traced as one input.
    k, v = torch.zeros(L, 2, H, 3, D), torch.zeros(L, 2, H, 3, D)  # (L, B, H, t, D)
    cross_k, cross_v = torch.zeros(L, 2, H, 5, D), torch.zeros(L, 2, H, 5, D)  # (L, B, H, S, D)
    return src, (torch.full((2, 1), BOS_ID), src.clone(), k, v, cross_k, cross_v)


def export_translator(model: Transformer) -> ExportedTranslator:
    """Export the encoder program and the decoder step with ``torch.export``.

    Batch, source length and cache length stay symbolic (dynamic shapes), bounded by
    ``MAX_BATCH`` and the model's ``max_len``.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"export_translator exports a Transformer, got {type(model).__name__}")
    Dim, max_len = torch.export.Dim, model.config.max_len
    batch, length = Dim("batch", min=1, max=MAX_BATCH), Dim("S", min=1, max=max_len)
    cached = Dim("t", min=0, max=max_len - 1)
    src, step_inputs = _example_inputs(model)
    per_layer = {1: batch, 3: cached}
    memory = {1: batch, 3: length}
    step_shapes = {"token": {0: batch}, "src": {0: batch, 1: length}, "self_k": per_layer,
                   "self_v": per_layer, "cross_k": memory, "cross_v": memory}  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            encoder = torch.export.export(
                EncoderProgram(model), (src,), dynamic_shapes={"src": {0: batch, 1: length}}
            )
            step = torch.export.export(
                DecoderStepProgram(model), step_inputs, dynamic_shapes=step_shapes
            )
    finally:
        model.train(was_training)
    return ExportedTranslator(encoder, step)


def eager_runner(module: nn.Module) -> Runner:
    """Return a runner that calls ``module`` without gradients (a PyTorch program or module)."""

    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(*inputs)
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    return run


@torch.no_grad()
def greedy_translate(
    encoder: Runner,
    step: Runner,
    src: Tensor,
    cache_shape: tuple[int, int, int],
    max_len: int,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = 0,
) -> Tensor:
    """Greedy decoding driven by two programs, whatever runs them.

    ``cache_shape`` is (L, H, D) of the decoder's caches. Returns what
    ``decoding.greedy_decode`` returns: (B, L') ids without BOS, EOS included, padding after.
    """
    check_positive_int(max_len=max_len)
    cross_k, cross_v = encoder(src)
    B = src.shape[0]
    L, H, D = cache_shape
    self_k = self_v = torch.zeros(L, B, H, 0, D)  # (L, B, H, 0, D): nothing decoded yet
    tokens = torch.full((B, 1), bos_id, dtype=torch.long)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_len):
        last = tokens[:, -1:].contiguous()  # (B, 1); runtimes want contiguous inputs
        logits, self_k, self_v = step(last, src, self_k, self_v, cross_k, cross_v)
        next_token = logits.argmax(dim=-1).masked_fill(finished, pad_id)  # (B,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= next_token == eos_id
        if bool(finished.all()):
            break
    return tokens[:, 1:]


def max_difference(reference: Runner, candidate: Runner, inputs: Sequence[tuple[Tensor, ...]]) -> float:  # fmt: skip
    """Return the largest absolute difference between two programs' outputs over ``inputs``.

    Every output of every input tuple is compared; a different number of outputs or a
    different shape raises ``ValueError``, and a NaN or inf where the other has a number
    (or not the same one) gives ``inf``.
    """
    worst = 0.0
    for args in inputs:
        expected, got = reference(*args), candidate(*args)
        if len(expected) != len(got):
            raise ValueError(f"{len(got)} outputs, expected {len(expected)}")
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            if tuple(e.shape) != tuple(g.shape):
                raise ValueError(f"output {i} has shape {tuple(g.shape)}, expected {tuple(e.shape)}")  # fmt: skip
            e, g = e.double(), g.double()
            if not torch.equal(torch.isfinite(e), torch.isfinite(g)) or not torch.equal(
                e[~torch.isfinite(e)].nan_to_num(), g[~torch.isfinite(g)].nan_to_num()
            ):
                return float("inf")
            if e.numel():
                worst = max(worst, (e - g).abs().nan_to_num().max().item())
    return worst


# --- ONNX ---------------------------------------------------------------------------------


def to_onnx(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """Convert an exported program to ONNX with the dynamo exporter and write it to ``path``."""
    path = Path(path)
    with quiet_imports(), contextlib.redirect_stdout(None):  # no progress lines, no notices
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    onnx_program.save(str(path))
    return path


class OnnxRunner:
    """Run an ONNX file with onnxruntime on the CPU: torch tensors in, a tuple of tensors out."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feed = {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, inputs, strict=True)}
        return tuple(torch.from_numpy(out) for out in self.session.run(None, feed))


# --- ExecuTorch -----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence stderr for the block: file descriptor 2, and Python's ``sys.stderr``.

    ExecuTorch's C++ logs reach file descriptor 2 in a plain process, and Python's
    ``sys.stderr`` inside a Jupyter kernel (its bindings write there).
    """
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def to_executorch(
    program: torch.export.ExportedProgram, path: str | os.PathLike, xnnpack: bool = True
) -> Path:
    """Lower an exported program to an ExecuTorch program (.pte) and write it to ``path``.

    ``xnnpack=True`` hands the operators XNNPACK supports (matrix products, most element-wise
    work) to its optimized CPU kernels; the rest runs on ExecuTorch's portable kernels.
    """
    with quiet_imports(), _quiet_native_stderr():  # XNNPACK logs its CPU probing
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        partitioner = [XnnpackPartitioner()] if xnnpack else []
        edge = to_edge_transform_and_lower(program, partitioner=partitioner)
        buffer = edge.to_executorch().buffer
    path = Path(path)
    path.write_bytes(buffer)
    return path


class ExecuTorchRunner:
    """Run a .pte file's ``forward`` with ExecuTorch's own runtime, as a phone app would."""

    def __init__(self, path: str | os.PathLike):
        with quiet_imports(), _quiet_native_stderr():  # the runtime logs its CPU probing
            from executorch.runtime import Runtime

            self.program = Runtime.get().load_program(str(path))
            self.method = self.program.load_method("forward")

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        args = [t.detach().contiguous() for t in inputs]
        # XNNPACK may probe the CPU again on a new input shape and log it from C++: keep
        # stderr quiet on every call (a few microseconds).
        with _quiet_native_stderr():
            return tuple(self.method.execute(args))
