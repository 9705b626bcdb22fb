"""Time greedy decoding with and without the KV cache, side by side in one process.

Three ways to produce the same tokens, on a model the size of the course checkpoint
(``cpu-course`` preset; random weights, which is fine for timing):

- ``full``: ``greedy_decode(use_cache=False)``: every step re-runs the decoder on the whole
  prefix and the output layer on every position of it, as the course's first decoder does;
- ``last``: the same re-run of the decoder, but the output layer only on the last position
  (so the table separates the cost of recomputing keys and values from that of the logits);
- ``cached``: ``greedy_decode(use_cache=True)``: one new token per step through every layer.

With ``--static``, also the preallocated cache of ``tfx_course.static_decoding``:

- ``static``: the same cached steps, written in place into buffers of fixed length;
- ``graph`` (CUDA only): ``static`` with each step replayed as one CUDA graph;
- ``full_graph`` (CUDA only): full recomputation on a fixed-width padded prefix, also replayed
  as a CUDA graph, so that ``full_graph / graph`` is what the cache saves once launch overhead
  is gone from both.

EOS is suppressed (its output bias set to -1e4), so every run generates exactly L tokens.
The methods alternate within each repetition (in rotating order) after a warm-up; the script
prints the median time of each and the median speed-up of the cache over full recomputation.

    python benchmarks/kv_cache.py                         # CPU, 1 thread, B = 1 and 32
    python benchmarks/kv_cache.py --lengths 16 32 64 128 --batch-sizes 1 32 --repeats 5
    python benchmarks/kv_cache.py --device cuda --preset gpu-base --batch-sizes 1 128
    python benchmarks/kv_cache.py --device cuda --preset gpu-base --static   # + static, graphs
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from tfx_course.decoding import greedy_decode
from tfx_course.model import Transformer, source_mask, target_mask
from tfx_course.repro import seed_everything
from tfx_course.static_decoding import StaticDecoder, capture_cuda_graph
from tfx_course.translation import PRESETS


@torch.no_grad()
def greedy_last_only(model: Transformer, src: Tensor, max_len: int) -> Tensor:
    """Greedy decoding without a cache that applies the output layer to the last position only."""
    memory, src_mask = model.encode(src), source_mask(src, PAD_ID)
    tokens = torch.full((src.shape[0], 1), BOS_ID, dtype=torch.long, device=src.device)
    for _ in range(max_len):
        x = model.decoder(tokens, memory, target_mask(tokens, PAD_ID), src_mask)  # (B, t, C)
        next_token = model.lm_head(x[:, -1]).argmax(dim=-1)  # (B,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
    return tokens[:, 1:]


def make_sources(batch_size: int, src_len: int, vocab_size: int, device: str) -> Tensor:
    """Random sources of lengths between src_len / 2 and src_len, padded (BOS ... EOS)."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab_size, (batch_size, src_len), generator=gen)
    lengths = torch.randint(src_len // 2, src_len + 1, (batch_size,), generator=gen)
    lengths[0] = src_len  # the longest sets the padded width
    src[:, 0] = BOS_ID
    for row, length in enumerate(lengths.tolist()):
        src[row, length - 1] = EOS_ID
        src[row, length:] = PAD_ID
    return src.to(device)


def timed(fn: Callable[[], Tensor], device: str) -> tuple[float, Tensor]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


class FullRecomputeGraph:
    """Greedy decoding without a cache, each step one CUDA graph: recomputation minus launch overhead.

    The prefix lives in a fixed (B, 1 + L) buffer, padded after the tokens decoded so far
    (padding is hidden from attention), and every step re-runs the decoder on all of it and
    writes the next token at a position held in a tensor.
    """

    def __init__(self, model: Transformer, src: Tensor, length: int, graphs: bool = True) -> None:
        self.model, self.src, self.length = model, src, length
        self.memory = model.encode(src)  # (B, S, C)
        self.tokens = torch.full((src.shape[0], 1 + length), PAD_ID, device=src.device)
        self.position = torch.zeros(1, dtype=torch.long, device=src.device)
        self.step = capture_cuda_graph(self._step, self._reset) if graphs else self._step

    def _reset(self) -> None:
        self.tokens.fill_(PAD_ID)
        self.tokens[:, 0] = BOS_ID
        self.position.zero_()

    def _step(self) -> Tensor:
        logits = self.model.decode(self.tokens, self.memory, self.src)  # (B, 1 + L, V)
        next_token = logits.index_select(1, self.position).argmax(dim=-1)  # (B, 1)
        self.tokens.index_copy_(1, self.position + 1, next_token)
        self.position.add_(1)
        return next_token

    @torch.no_grad()
    def __call__(self) -> Tensor:
        self._reset()
        for _ in range(self.length):
            self.step()
        return self.tokens[:, 1:]  # (B, L)


def decoding_methods(
    model: Transformer, src: Tensor, length: int, static: bool = False, graphs: bool = False
) -> dict[str, Callable[[], Tensor]]:
    """Return the ways to decode ``src`` greedily for ``length`` tokens, by name."""
    methods = {
        "full": lambda: greedy_decode(model, src, max_len=length, use_cache=False),
        "last": lambda: greedy_last_only(model, src, length),
        "cached": lambda: greedy_decode(model, src, max_len=length, use_cache=True),
    }
    if static:
        decoder = StaticDecoder(model, pad_to=1)
        methods["static"] = lambda: decoder.greedy(src, max_len=length)
    if graphs:
        graphed = StaticDecoder(model, graphs=True, pad_to=1)
        methods["graph"] = lambda: graphed.greedy(src, max_len=length)
        with torch.no_grad():
            methods["full_graph"] = FullRecomputeGraph(model, src, length)
    return methods


def measure(methods: dict[str, Callable[[], Tensor]], repeats: int, device: str) -> dict:
    """Return median seconds per method, median per-repetition speed-ups, and token agreement.

    ``a/b`` is the median over repetitions of time(a) / time(b), for a in the recomputing
    methods and b in the cached ones; ``same`` says whether every method gave the tokens of
    ``cached``.
    """
    names = list(methods)
    outputs = {name: timed(fn, device)[1] for name, fn in methods.items()}  # warm-up
    same = all(torch.equal(out, outputs["cached"]) for out in outputs.values())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # rotate the order between repetitions
            times[name].append(timed(methods[name], device)[0])
    result: dict = {name: statistics.median(t) for name, t in times.items()}
    for slow in ("full", "last", "full_graph", "cached", "static"):
        for fast in ("cached", "static", "graph"):
            if slow in times and fast in times and slow != fast:
                ratios = [a / b for a, b in zip(times[slow], times[fast], strict=True)]
                result[f"{slow}/{fast}"] = statistics.median(ratios)
    result["same"] = same
    return result


def random_model(preset: str, vocab_size: int | None, device: str) -> Transformer:
    """Return the preset's model with random weights that never stops early (EOS suppressed)."""
    seed_everything(0)
    vocab = vocab_size or PRESETS[preset].vocab_size
    config = dataclasses.replace(PRESETS[preset].model, src_vocab_size=vocab, tgt_vocab_size=vocab)
    model = Transformer(config)
    with torch.no_grad():
        model.lm_head.bias[EOS_ID] = -1e4  # never stop early: exactly L tokens per run
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-course", choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--src-len", type=int, default=24, help="padded source length S")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--static", action="store_true", help="add the static cache (and graphs)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = random_model(args.preset, args.vocab_size, args.device)
    c = model.config
    print(f"model: preset {args.preset} with random weights: d_model={c.d_model}, "
          f"n_heads={c.n_heads}, {c.n_encoder_layers}+{c.n_decoder_layers} layers, "
          f"d_ff={c.d_ff}, vocab={c.tgt_vocab_size}, fused_attention={c.fused_attention}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters")  # fmt: skip
    where = f"{args.threads} thread(s)" if args.device == "cpu" else args.device
    print(f"device: {args.device}, {where}; torch {torch.__version__}; src (B, S={args.src_len}) "
          f"padded; median of {args.repeats} interleaved repetitions after a warm-up")  # fmt: skip
    graphs = args.static and args.device.startswith("cuda")
    extra = ("static", "graph", "full_graph")[: (1 + 2 * graphs) if args.static else 0]
    print()
    print("    B     L   full ms   last ms  cached ms" + "".join(f"{n + ' ms':>12}" for n in extra)
          + "  full/cached" + ("  full/graph  full_graph/graph" if graphs else "") + "  same tokens")  # fmt: skip
    for batch_size in args.batch_sizes:
        src = make_sources(batch_size, args.src_len, c.src_vocab_size, args.device)
        for length in args.lengths:
            methods = decoding_methods(model, src, length, args.static, graphs)
            r = measure(methods, args.repeats, args.device)
            ratios = f"{r['full/cached']:11.2f}x"
            if graphs:
                ratios += f" {r['full/graph']:10.2f}x {r['full_graph/graph']:16.2f}x"
            print(f"{batch_size:5d} {length:5d} {1e3 * r['full']:9.1f} {1e3 * r['last']:9.1f} "
                  f"{1e3 * r['cached']:10.1f}" + "".join(f"{1e3 * r[n]:12.1f}" for n in extra)
                  + f"  {ratios}  {'yes' if r['same'] else 'NO'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
