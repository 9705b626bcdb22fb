"""Time one training step of tfx_course's Transformer against torch.nn.Transformer.

Both models get the same embeddings, positional encodings and output layer sizes, the same
batches (padded, so the masks do real work), the same loss and AdamW. Steps alternate
between the two models (ABBA order) after a warm-up, so drifting clock speeds and other
load hit both alike; the script prints the median step time of each and the median of the
per-repetition ratios ours / torch.

    python benchmarks/train_step.py                      # CPU size, 2 threads
    python benchmarks/train_step.py --no-fused           # explicit attention path
    python benchmarks/train_step.py --device cuda --d-model 512 --n-heads 8 --batch-size 128
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import causal_mask, to_nn_attn_mask
from tfx_course.layers import sinusoidal_encoding
from tfx_course.model import ModelConfig, Transformer

PAD_ID = 0


class TorchTransformer(nn.Module):
    """nn.Transformer with the same embeddings, positions and output layer as ours."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.src_embed = nn.Embedding(config.src_vocab_size, config.d_model, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(config.tgt_vocab_size, config.d_model, padding_idx=PAD_ID)
        self.register_buffer("pe", sinusoidal_encoding(config.max_len, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        with warnings.catch_warnings():  # its nested-tensor notice for norm_first=True
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(
                d_model=config.d_model,
                nhead=config.n_heads,
                num_encoder_layers=config.n_encoder_layers,
                num_decoder_layers=config.n_decoder_layers,
                dim_feedforward=config.d_ff,
                dropout=config.dropout,
                batch_first=True,
                norm_first=config.norm_first,
            )
        self.lm_head = nn.Linear(config.d_model, config.tgt_vocab_size)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        scale = math.sqrt(self.config.d_model)
        x_src = self.dropout(self.src_embed(src) * scale + self.pe[: src.shape[1]])
        x_tgt = self.dropout(self.tgt_embed(tgt) * scale + self.pe[: tgt.shape[1]])
        src_blocked = to_nn_attn_mask(src != PAD_ID)  # nn.Transformer: True = blocked
        x = self.transformer(
            x_src,
            x_tgt,
            tgt_mask=to_nn_attn_mask(causal_mask(tgt.shape[1], device=tgt.device)),
            src_key_padding_mask=src_blocked,
            tgt_key_padding_mask=to_nn_attn_mask(tgt != PAD_ID),
            memory_key_padding_mask=src_blocked,
            tgt_is_causal=True,
        )
        return self.lm_head(x)


def make_batches(
    n: int, config: ModelConfig, batch_size: int, src_len: int, tgt_len: int, device: str
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Random (src, tgt_in, tgt_out) batches whose sequences are padded to full length."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        src = torch.randint(1, config.src_vocab_size, (batch_size, src_len), generator=gen)
        tgt = torch.randint(1, config.tgt_vocab_size, (batch_size, tgt_len + 1), generator=gen)
        for seq, length in ((src, src_len), (tgt, tgt_len + 1)):
            lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=gen)
            seq[torch.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
        tgt[:, 0] = 1  # a BOS-like first token, never padding
        batches.append((src.to(device), tgt[:, :-1].to(device), tgt[:, 1:].to(device)))
    return batches


def make_step(model: nn.Module, vocab_size: int) -> Callable[[tuple[Tensor, ...]], float]:
    """Return a function that runs forward, backward and one AdamW step on a batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: tuple[Tensor, ...]) -> float:
        src, tgt_in, tgt_out = batch
        optimizer.zero_grad(set_to_none=True)
        logits = model(src, tgt_in)
        loss = F.cross_entropy(
            logits.reshape(-1, vocab_size), tgt_out.reshape(-1), ignore_index=PAD_ID
        )
        loss.backward()
        optimizer.step()
        return loss.item()  # forces the step to finish, also on a GPU

    return step


def timed(step: Callable[[tuple[Tensor, ...]], float], batch: tuple[Tensor, ...]) -> float:
    start = time.perf_counter()
    step(batch)
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=3, help="encoder layers and decoder layers")
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=1000, help="source and target vocabulary")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--tgt-len", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--reps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(
        args.vocab_size,
        args.vocab_size,
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_encoder_layers=args.n_layers,
        n_decoder_layers=args.n_layers,
        d_ff=args.d_ff,
        dropout=args.dropout,
        max_len=max(args.src_len, args.tgt_len),
        norm_first=args.norm_first,
        fused_attention=args.fused,
    )
    ours = Transformer(config).to(args.device).train()
    theirs = TorchTransformer(config).to(args.device).train()
    steps = {"ours": make_step(ours, config.tgt_vocab_size)}
    steps["torch"] = make_step(theirs, config.tgt_vocab_size)
    n_batches = 4
    batches = make_batches(
        n_batches, config, args.batch_size, args.src_len, args.tgt_len, args.device
    )

    for i in range(args.warmup):
        for step in steps.values():
            step(batches[i % n_batches])
    times: dict[str, list[float]] = {"ours": [], "torch": []}
    for i in range(args.reps):
        order = ("ours", "torch") if i % 2 == 0 else ("torch", "ours")  # ABBA
        for name in order:
            times[name].append(timed(steps[name], batches[i % n_batches]))

    ratios = [a / b for a, b in zip(times["ours"], times["torch"], strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4)
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}\n"
        f"B={args.batch_size} S={args.src_len} T={args.tgt_len} V={args.vocab_size} "
        f"d_model={args.d_model} n_heads={args.n_heads} layers={args.n_layers}+{args.n_layers} "
        f"d_ff={args.d_ff} dropout={args.dropout} norm_first={args.norm_first} "
        f"fused={args.fused}\n"
        f"params: ours={ours.num_parameters():,} torch={sum(p.numel() for p in theirs.parameters()):,}\n"
        f"warmup={args.warmup} reps={args.reps} (forward + backward + AdamW step)\n"
        f"median step  ours {statistics.median(times['ours']) * 1e3:8.1f} ms\n"
        f"median step torch {statistics.median(times['torch']) * 1e3:8.1f} ms\n"
        f"median ratio ours/torch {statistics.median(ratios):.3f} "
        f"(quartiles {low:.3f} .. {high:.3f})"
    )


if __name__ == "__main__":
    main()
