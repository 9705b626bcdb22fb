"""Tests for tfx_course.efficiency: blockwise attention, measurement, accumulation, streaming."""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tfx_course import efficiency
from tfx_course.attention import padding_mask, scaled_dot_product_attention
from tfx_course.data.batching import make_batch, make_batches
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import TrainConfig, make_optimizer, make_scheduler, train_step

TOK = tokenizer_for("reversal")

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest.py


def _qkv(B=2, H=3, T=7, S=11, D=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=gen)
    k = torch.randn(B, H, S, D, generator=gen)
    v = torch.randn(B, H, S, D + 2, generator=gen)
    return q, k, v


def _masks(B=2, T=7, S=11):
    keep = torch.ones(B, S, dtype=torch.bool)
    keep[1, S - 4 :] = False  # the second sequence has 4 padded keys
    causal = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)  # (T, S)
    return {
        "none": None,
        "padding": padding_mask(keep),  # (B, 1, 1, S)
        "causal": causal,
        "padding and causal": padding_mask(keep) & causal,
    }


# --- blockwise attention ------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 4, 11, 64])  # 3 and 4 do not divide S = 11
@pytest.mark.parametrize("mask_name", ["none", "padding", "causal", "padding and causal"])
def test_blockwise_attention_equals_full_attention(block_size, mask_name):
    q, k, v = _qkv()
    mask = _masks()[mask_name]
    expected, _ = scaled_dot_product_attention(q, k, v, mask)
    got = efficiency.blockwise_attention(q, k, v, mask, block_size=block_size)
    assert got.shape == expected.shape == (2, 3, 7, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [2, 5, 16])
def test_blockwise_attention_equals_pytorchs_fused_kernel(block_size):
    q, k, v = _qkv(T=13, S=13, D=8)
    v = v[..., :8]
    mask = _masks(T=13, S=13)["padding and causal"]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = efficiency.blockwise_attention(q, k, v, mask, block_size=block_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_fully_blocked_row_averages_the_values_like_the_library():
    q, k, v = _qkv(B=1, H=1, T=2, S=5)
    mask = torch.tensor([[True, False, True, False, False], [False] * 5])  # row 1: all blocked
    got = efficiency.blockwise_attention(q, k, v, mask, block_size=2)
    expected, _ = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0, 0, 1], v[0, 0].mean(dim=0), atol=1e-5, rtol=1e-5)


def test_blockwise_attention_survives_scores_that_would_overflow_exp():
    q, k, v = _qkv(B=1, H=1, T=4, S=9)
    q = q * 400  # scores of several thousand: a softmax without the running max overflows
    got = efficiency.blockwise_attention(q, k, v, block_size=2)
    expected, _ = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_blockwise_attention_rejects_bad_arguments():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="block_size"):
        efficiency.blockwise_attention(q, k, v, block_size=0)
    with pytest.raises(TypeError, match="boolean"):
        efficiency.blockwise_attention(q, k, v, torch.ones(7, 11))
    with pytest.raises(ValueError, match="does not broadcast"):
        efficiency.blockwise_attention(q, k, v, torch.ones(7, 10, dtype=torch.bool))


def test_blockwise_attention_has_the_gradients_of_full_attention():
    q, k, v = (t.requires_grad_() for t in _qkv(T=9, S=9))
    mask = _masks(T=9, S=9)["padding and causal"]
    upstream = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(1))
    full = torch.autograd.grad((scaled_dot_product_attention(q, k, v, mask)[0] * upstream).sum(), (q, k, v))  # fmt: skip
    blocks = torch.autograd.grad((efficiency.blockwise_attention(q, k, v, mask, 4) * upstream).sum(), (q, k, v))  # fmt: skip
    for got, expected in zip(blocks, full, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_blockwise_attention_never_forms_the_full_score_matrix():
    q, k, v = _qkv(B=1, H=2, T=256, S=256, D=8)
    _, full = efficiency.tensor_memory(scaled_dot_product_attention, q, k, v)
    _, blocks = efficiency.tensor_memory(efficiency.blockwise_attention, q, k, v, None, 16)
    scores_bytes = 1 * 2 * 256 * 256 * 4
    assert full.largest_bytes == scores_bytes
    assert blocks.largest_bytes == scores_bytes // 16  # one (B, H, T, 16) block of scores
    assert blocks.peak_bytes < full.peak_bytes / 4


# --- measuring ------------------------------------------------------------------------------


def test_tensor_memory_counts_live_tensors_and_not_views():
    x = torch.randn(100, 100)  # an input: not counted

    def work(x):
        a = x * 2  # 40,000 bytes
        b = a.t()  # a view: nothing new
        c = b + 1  # 40,000 more, while a is alive
        del a, b
        d = c.sum()  # 4 bytes; a was freed
        return d

    _, memory = efficiency.tensor_memory(work, x)
    assert memory.peak_bytes == 80_000
    assert memory.largest_bytes == 40_000


def test_tensor_memory_sees_what_backward_keeps_and_creates():
    lin = torch.nn.Linear(64, 64, bias=False)
    x = torch.randn(32, 64)
    _, forward_only = efficiency.tensor_memory(lambda: lin(x).sum())
    _, with_backward = efficiency.tensor_memory(lambda: lin(x).sum().backward())
    assert forward_only.largest_bytes == 32 * 64 * 4  # the output; the weight is an input
    assert with_backward.largest_bytes == 64 * 64 * 4  # the weight's gradient
    assert with_backward.peak_bytes > forward_only.peak_bytes


def test_count_flops_counts_matrix_products_exactly():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert efficiency.count_flops(torch.matmul, a, b) == 2 * 3 * 5 * 7
    q, k, v = _qkv(B=1, H=2, T=6, S=6, D=4)
    v = v[..., :4]

    def attention(q, k, v):
        return (q @ k.transpose(-2, -1) / 2).softmax(-1) @ v

    assert efficiency.count_flops(attention, q, k, v) == 2 * (2 * 2 * 6 * 6 * 4)


def test_count_operations_grows_with_a_python_loop_and_not_with_tensor_size():
    cell = torch.nn.LSTMCell(4, 4)

    def unrolled(x):
        h = c = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h, c = cell(x[:, t], (h, c))
        return h

    short, long = (efficiency.count_operations(unrolled, torch.randn(2, T, 4)) for T in (3, 6))
    assert long - short == short - efficiency.count_operations(unrolled, torch.randn(2, 0, 4))
    assert efficiency.count_operations(torch.matmul, torch.randn(5, 5), torch.randn(5, 5)) == 1
    assert efficiency.count_operations(torch.matmul, torch.randn(50, 50), torch.randn(50, 50)) == 1


def test_best_times_reads_the_clock_it_is_given():
    ticks = iter(range(100))
    times = efficiency.best_times({"a": lambda: None}, repeats=3, clock=lambda: next(ticks) ** 2)
    assert times == {"a": 1}  # readings 0, 1, 4, 9, 16, 25: the calls took 1, 5 and 9


def test_loglog_slope_recovers_a_power_law():
    xs = [16, 32, 64, 128]
    assert efficiency.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert efficiency.loglog_slope(xs, [0.5 * x for x in xs]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        efficiency.loglog_slope([1, 2], [0, 1])


def test_best_times_returns_the_minimum_per_function():
    calls = collections.Counter()

    def make(name):
        return lambda: calls.update([name])

    times = efficiency.best_times({"a": make("a"), "b": make("b")}, repeats=3)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls == {"a": 4, "b": 4}  # one warm-up and three timed calls each


# --- gradient accumulation ------------------------------------------------------------------


def _model(seed=0):
    seed_everything(seed)
    config = ModelConfig.tiny(TOK.vocab_size, TOK.vocab_size)
    return Transformer(dataclasses.replace(config, d_model=16, d_ff=32, max_len=16, dropout=0.0))


def _big_batch():
    pairs = make_pairs("reversal", 24, seed=3, min_len=1, max_len=9)
    return make_batch(pairs, TOK, TOK)


def _optimizer(model, config, kind):
    if kind == "adamw":
        optimizer = make_optimizer(model, config)
        return optimizer, make_scheduler(optimizer, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize(("kind", "smoothing"), [("sgd", 0.0), ("sgd", 0.1), ("adamw", 0.1)])
def test_accumulation_over_micro_batches_equals_one_big_batch(k, kind, smoothing):
    config = TrainConfig.toy(lr=1e-2, warmup_steps=2, max_steps=10, label_smoothing=smoothing)
    batch = _big_batch()
    big, accumulated = _model(), _model()
    runs = [_optimizer(big, config, kind), _optimizer(accumulated, config, kind)]
    for _ in range(2):  # two steps: the optimizer's state must agree too
        expected = train_step(big, batch, *runs[0], config, pad_id=0)
        micro = efficiency.split_batch(batch, k)
        got = efficiency.accumulation_step(accumulated, micro, *runs[1], config, pad_id=0)
        assert got == pytest.approx(expected, rel=1e-5)
    for (name, p), q in zip(big.named_parameters(), accumulated.parameters(), strict=True):
        if kind == "adamw" and name.endswith("k_proj.bias"):
            # Its gradient is 0 in exact arithmetic (a key bias shifts a whole row of scores,
            # which softmax ignores): only rounding noise is left, and Adam, which divides by
            # the gradient's size, turns noise of 1e-10 into steps of about lr / 100.
            continue
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=name)


def test_averaging_micro_batch_means_is_not_the_big_batch():
    # The trap accumulation_step avoids: micro-batches with different token counts weigh
    # their tokens differently when each is averaged on its own.
    batch = _big_batch()
    micro = efficiency.split_batch(batch, 3)
    assert len({b.num_tokens() for b in micro}) > 1
    model = _model()
    losses = [
        F.cross_entropy(model(b.src, b.tgt_in).flatten(0, 1), b.tgt_out.flatten(), ignore_index=0)
        for b in micro
    ]
    whole = F.cross_entropy(
        model(batch.src, batch.tgt_in).flatten(0, 1), batch.tgt_out.flatten(), ignore_index=0
    )
    assert abs(sum(losses).item() / 3 - whole.item()) > 1e-3


def test_split_batch_keeps_every_row_once():
    batch = _big_batch()
    parts = efficiency.split_batch(batch, 5)
    assert [len(p) for p in parts] == [5, 5, 5, 5, 4]
    assert torch.equal(torch.cat([p.src for p in parts]), batch.src)
    with pytest.raises(ValueError, match="cannot split a batch of 24 rows into 25"):
        efficiency.split_batch(batch, 25)


# --- streaming ------------------------------------------------------------------------------


def _corpus(n=500, seed=0):
    return make_pairs("reversal", n, seed=seed, min_len=1, max_len=20)


def _rows(batch):
    return [TOK.decode(row.tolist()) for row in batch.src]


def test_shards_round_trip_lazily(tmp_path):
    pairs = _corpus(230)
    paths = efficiency.write_shards(iter(pairs), tmp_path / "shards", shard_size=50)
    assert [p.name for p in paths] == [f"shard-{i:05d}.tsv" for i in range(5)]
    assert list(efficiency.read_shards(paths)) == pairs
    stream = efficiency.read_shards(paths)
    assert next(stream) == pairs[0]  # a generator: nothing read beyond what is asked for
    shuffled = list(efficiency.read_shards(paths, shuffle=True, seed=1))
    assert sorted(shuffled) == sorted(pairs) and shuffled != pairs


def test_write_shards_rejects_a_tab(tmp_path):
    with pytest.raises(ValueError, match="tab or a newline"):
        efficiency.write_shards([("a\tb", "c")], tmp_path, shard_size=10)


@pytest.mark.parametrize(("max_tokens", "pool_size"), [(64, 100), (200, 37), (23, 500)])
def test_streamed_batches_cover_every_sentence_once_within_the_budget(
    tmp_path, max_tokens, pool_size
):
    pairs = _corpus()
    paths = efficiency.write_shards(pairs, tmp_path, shard_size=60)
    for epoch in range(2):
        stream = efficiency.read_shards(paths, shuffle=True, seed=epoch)
        batches = list(
            efficiency.stream_token_batches(stream, TOK, TOK, max_tokens, pool_size, seed=epoch)
        )
        seen = collections.Counter(row for batch in batches for row in _rows(batch))
        assert seen == collections.Counter(source for source, _ in pairs)
        for batch in batches:
            width = max(batch.src.shape[1], batch.tgt_in.shape[1] + 1)
            assert len(batch) * width <= max_tokens


def test_the_stream_holds_at_most_one_pool():
    pulled = 0

    def counting():
        nonlocal pulled
        for pair in _corpus(1000):
            pulled += 1
            yield pair

    batches = efficiency.stream_token_batches(counting(), TOK, TOK, 128, pool_size=100)
    rows = 0
    for batch in batches:
        rows += len(batch)
        assert pulled - rows <= 100 and pulled <= 1000
    assert rows == pulled == 1000


def test_bucketing_in_pools_pads_less_than_random_batches():
    pairs = _corpus(2000)
    streamed = list(efficiency.stream_token_batches(pairs, TOK, TOK, 256, pool_size=500))
    random_batches = make_batches(pairs, TOK, TOK, batch_size=12)

    def efficiency_of(batches):
        real = sum(int((b.src != 0).sum()) for b in batches)
        return real / sum(b.src.numel() for b in batches)

    assert efficiency_of(streamed) > 0.9 > efficiency_of(random_batches) + 0.2


def test_stream_token_batches_names_an_example_over_the_budget():
    with pytest.raises(ValueError, match="longer than max_tokens=8"):
        list(efficiency.stream_token_batches([("abcdefghij", "jihgfedcba")], TOK, TOK, 8))


def test_math_of_the_fitted_slope_matches_flop_counts():
    # Attention's matrix products grow with T^2, the feed-forward block's with T.
    ff = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    lengths = [32, 64, 128]
    attention, feed_forward = [], []
    for T in lengths:
        q = k = v = torch.randn(1, 2, T, 8)
        attention.append(efficiency.count_flops(scaled_dot_product_attention, q, k, v))
        feed_forward.append(efficiency.count_flops(ff, torch.randn(1, T, 16)))
    assert efficiency.loglog_slope(lengths, attention) == pytest.approx(2.0)
    assert efficiency.loglog_slope(lengths, feed_forward) == pytest.approx(1.0)
    assert attention[0] == 2 * 2 * (1 * 2 * 32 * 32 * 8) and math.isclose(
        feed_forward[0], 2 * 2 * 32 * 16 * 64
    )
