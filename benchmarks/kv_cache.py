"""Time greedy decoding with and without the KV cache, side by side in one process.

Three ways to produce the same tokens, on a model the size of the course checkpoint
(``cpu-course`` preset; random weights, which is fine for timing):

- ``full``: ``greedy_decode(use_cache=False)``: every step re-runs the decoder on the whole
  prefix and the output layer on every position of it, as the course's first decoder does;
- ``last``: the same re-run of the decoder, but the output layer only on the last position
  (so the table separates the cost of recomputing keys and values from that of the logits);
- ``cached``: ``greedy_decode(use_cache=True)``: one new token per step through every layer.

EOS is suppressed (its output bias set to -1e4), so every run generates exactly L tokens.
The three alternate within each repetition (in rotating order) after a warm-up; the script
prints the median time of each and the median speed-up of ``cached`` over the others.

    python benchmarks/kv_cache.py                         # CPU, 1 thread, B = 1 and 32
    python benchmarks/kv_cache.py --lengths 16 32 64 128 --batch-sizes 1 32 --repeats 5
    python benchmarks/kv_cache.py --device cuda --preset gpu-base --batch-sizes 1 128
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


def measure(model: Transformer, src: Tensor, length: int, repeats: int, device: str) -> dict:
    """Return median seconds per method and median per-repetition speed-ups of the cache."""
    methods = {
        "full": lambda: greedy_decode(model, src, max_len=length, use_cache=False),
        "last": lambda: greedy_last_only(model, src, length),
        "cached": lambda: greedy_decode(model, src, max_len=length, use_cache=True),
    }
    names = list(methods)
    outputs = {name: timed(fn, device)[1] for name, fn in methods.items()}  # warm-up
    same = torch.equal(outputs["full"], outputs["cached"]) and torch.equal(outputs["last"], outputs["cached"])  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order between repetitions
            times[name].append(timed(methods[name], device)[0])
    result = {name: statistics.median(t) for name, t in times.items()}
    for other in ("full", "last"):
        ratios = [a / b for a, b in zip(times[other], times["cached"], strict=True)]
        result[f"{other}/cached"] = statistics.median(ratios)
    result["same"] = same
    return result


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
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    seed_everything(0)
    vocab = args.vocab_size or preset.vocab_size
    model = Transformer(
        dataclasses.replace(preset.model, src_vocab_size=vocab, tgt_vocab_size=vocab)
    )
    with torch.no_grad():
        model.lm_head.bias[EOS_ID] = -1e4  # never stop early: exactly L tokens per run
    model = model.to(args.device).eval()
    c = model.config
    print(f"model: preset {args.preset} with random weights: d_model={c.d_model}, "
          f"n_heads={c.n_heads}, {c.n_encoder_layers}+{c.n_decoder_layers} layers, "
          f"d_ff={c.d_ff}, vocab={c.tgt_vocab_size}, fused_attention={c.fused_attention}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters")  # fmt: skip
    where = f"{args.threads} thread(s)" if args.device == "cpu" else args.device
    print(f"device: {args.device}, {where}; torch {torch.__version__}; src (B, S={args.src_len}) "
          f"padded; median of {args.repeats} interleaved repetitions after a warm-up")  # fmt: skip
    print()
    print("    B     L   full ms   last ms  cached ms  full/cached  last/cached  same tokens")
    for batch_size in args.batch_sizes:
        src = make_sources(batch_size, args.src_len, c.src_vocab_size, args.device)
        for length in args.lengths:
            r = measure(model, src, length, args.repeats, args.device)
            print(f"{batch_size:5d} {length:5d} {1e3 * r['full']:9.1f} {1e3 * r['last']:9.1f} "
                  f"{1e3 * r['cached']:10.1f} {r['full/cached']:11.2f}x {r['last/cached']:11.2f}x"
                  f"  {'yes' if r['same'] else 'NO'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
