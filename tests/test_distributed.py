"""Tests for tfx_course.distributed: sharding, and two CPU processes (gloo) under
DistributedDataParallel training like one process on the same batches.

Each process takes every other row of each global batch (``shard_batch``); ``train_step``
divides the loss by the global token count, so the averaged gradient is the one-process
gradient. The two runs then differ only in the order in which floats are added (two partial
sums joined by all-reduce against one sum), about 1e-7 relative per operation; AdamW's
division by sqrt(v) passes such differences on, so after a few steps we allow 1e-5 relative on
the losses and 1e-5 absolute on the weights: far below any real mistake (a wrong loss scale
or an unsharded batch changes the loss by > 1e-2).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tfx_course.data.batching import Seq2SeqBatch, make_batches
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.distributed import Group, process_group, shard_batch, world
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import TrainConfig, fit

CONFIG = TrainConfig(lr=3e-3, max_steps=4, warmup_steps=2, schedule="cosine", label_smoothing=0.1)
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def _batches():
    tokenizer = tokenizer_for("reversal")
    pairs = make_pairs("reversal", 24, seed=0)
    return make_batches(pairs, tokenizer, tokenizer, batch_size=8, seed=0)  # 3 batches of 8 rows


def _model() -> Transformer:
    vocab = tokenizer_for("reversal").vocab_size
    seed_everything(0)
    config = ModelConfig(vocab, vocab, d_model=16, n_heads=4, n_encoder_layers=1,
                         n_decoder_layers=1, d_ff=32, dropout=0.0, max_len=16)  # fmt: skip
    return Transformer(config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = _model()
        history = fit(nn.parallel.DistributedDataParallel(model), _batches(), CONFIG, progress=False)  # fmt: skip
        if rank == 0:
            torch.save({"loss": history.loss, "state": model.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_on_the_same_global_batches(tmp_path):
    out = str(tmp_path / "ddp.pt")
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    model = _model()
    single = fit(model, _batches(), CONFIG, progress=False)
    assert len(ddp["loss"]) == len(single.loss) == CONFIG.max_steps
    assert ddp["loss"] == pytest.approx(single.loss, rel=LOSS_RTOL)
    assert single.loss[-1] < single.loss[0] - 0.05  # it trained: the comparison means something
    compared = 0
    for name, tensor in model.state_dict().items():
        if name.endswith("k_proj.bias"):
            # Adding b_k to every key adds q . b_k to all scores of a query: softmax ignores it,
            # so its true gradient is 0 and Adam scales pure rounding noise up to lr-sized steps.
            continue
        assert torch.allclose(ddp["state"][name], tensor, atol=WEIGHT_ATOL, rtol=0), name
        compared += 1
    assert compared > 20


def test_shard_batch_splits_rows_between_processes():
    src = torch.arange(10).reshape(5, 2)
    batch = Seq2SeqBatch(src, src + 10, src + 20)
    shards = [shard_batch(batch, r, 2) for r in range(2)]
    assert shards[0].src.tolist() == [[0, 1], [4, 5], [8, 9]]
    assert shards[1].tgt_out.tolist() == [[22, 23], [26, 27]]
    with pytest.raises(ValueError, match="5 rows cannot be shared by 6 processes"):
        shard_batch(batch, 0, 6)


def test_outside_torchrun_the_group_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group(torch.device("cpu")) as group:
        assert group == Group(torch.device("cpu"), 0, 1) and group.lead
        model = nn.Linear(2, 2)
        assert group.wrap(model) is model and world() == (0, 1)
