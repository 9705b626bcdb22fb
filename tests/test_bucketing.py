"""Tests for batching by token count with length bucketing (tfx_course.data.bucketing)."""

import random

import pytest

from tfx_course.data.batching import pad_sequences
from tfx_course.data.bucketing import (
    PaddingStats,
    bucket_lengths,
    fixed_shape_batches,
    make_fixed_shape_batches,
    make_token_batches,
    padding_stats,
    token_batches,
)
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID


def _pairs(n: int = 600, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Id lists with BOS ... EOS and sentence-like lengths (target about as long as source)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src_len = max(1, int(rng.gauss(14, 6)))
        tgt_len = max(1, src_len + rng.randint(-3, 3))
        src = [BOS_ID, *(rng.randrange(4, 50) for _ in range(src_len)), EOS_ID]
        tgt = [BOS_ID, *(rng.randrange(4, 50) for _ in range(tgt_len)), EOS_ID]
        pairs.append((src, tgt))
    return pairs


PAIRS = _pairs()
MAX_TOKENS = 256


def _size(i: int) -> int:
    return max(len(PAIRS[i][0]), len(PAIRS[i][1]))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("bucket", [True, False])
def test_every_example_once_and_each_padded_tensor_under_max_tokens(shuffle, bucket):
    batches = token_batches(PAIRS, MAX_TOKENS, shuffle=shuffle, seed=3, bucket=bucket)
    assert sorted(i for batch in batches for i in batch) == list(range(len(PAIRS)))
    for batch in batches:
        src = pad_sequences([PAIRS[i][0] for i in batch])
        tgt = pad_sequences([PAIRS[i][1] for i in batch])
        assert src.numel() <= MAX_TOKENS and tgt.numel() <= MAX_TOKENS


def test_without_shuffle_batches_are_sorted_by_length_and_filled_greedily():
    batches = token_batches(PAIRS, MAX_TOKENS, shuffle=False)
    flat = [i for batch in batches for i in batch]
    assert [_size(i) for i in flat] == sorted(_size(i) for i in range(len(PAIRS)))
    for batch, following in zip(batches, batches[1:], strict=False):
        # the next example would not have fitted: the batch is as full as the budget allows
        assert (len(batch) + 1) * _size(following[0]) > MAX_TOKENS
    # random batching without shuffle keeps the original order
    plain = token_batches(PAIRS, MAX_TOKENS, shuffle=False, bucket=False)
    assert [i for batch in plain for i in batch] == list(range(len(PAIRS)))


def test_shuffle_mixes_the_batch_order_but_keeps_each_bucket_narrow():
    batches = token_batches(PAIRS, MAX_TOKENS, shuffle=True, seed=0)
    assert batches == token_batches(PAIRS, MAX_TOKENS, shuffle=True, seed=0)
    assert batches != token_batches(PAIRS, MAX_TOKENS, shuffle=True, seed=1)
    firsts = [min(_size(i) for i in batch) for batch in batches]
    assert firsts != sorted(firsts)  # the order of the batches is shuffled
    # put the batches back in length order: the examples are sorted, so each batch is a bucket
    by_length = sorted(batches, key=lambda b: (min(_size(i) for i in b), max(_size(i) for i in b)))
    flat = [_size(i) for batch in by_length for i in batch]
    assert flat == sorted(flat)


def test_bucketing_wastes_much_less_padding_than_random_batches():
    bucketed = token_batches(PAIRS, MAX_TOKENS, seed=0)
    random_ = token_batches(PAIRS, MAX_TOKENS, seed=0, bucket=False)
    ours, baseline = padding_stats(PAIRS, bucketed), padding_stats(PAIRS, random_)
    assert ours.real_tokens == baseline.real_tokens == sum(len(s) + len(t) for s, t in PAIRS)
    assert ours.efficiency > 0.85 > 0.75 > baseline.efficiency
    assert ours.n_batches < baseline.n_batches  # same budget, fewer steps per epoch


def test_padding_stats_count_what_the_padded_tensors_hold():
    batches = token_batches(PAIRS[:50], 64, seed=2)
    stats = padding_stats(PAIRS[:50], batches)
    real = padded = 0
    for batch in batches:
        for side in (0, 1):
            tensor = pad_sequences([PAIRS[i][side] for i in batch], PAD_ID)
            padded += tensor.numel()
            real += int((tensor != PAD_ID).sum())
    assert stats == PaddingStats(len(batches), real, padded)
    assert stats.efficiency == pytest.approx(real / padded)


def test_make_token_batches_builds_shifted_seq2seq_batches():
    batches = make_token_batches(PAIRS, MAX_TOKENS, seed=0)
    rows = []
    for batch in batches:
        assert batch.src.numel() <= MAX_TOKENS and batch.tgt_in.numel() <= MAX_TOKENS
        assert batch.tgt_in.shape == batch.tgt_out.shape
        for src, tgt_in, tgt_out in zip(batch.src, batch.tgt_in, batch.tgt_out, strict=True):
            src = [int(x) for x in src if x != PAD_ID]
            tgt_in = [int(x) for x in tgt_in if x != PAD_ID]
            tgt_out = [int(x) for x in tgt_out if x != PAD_ID]
            assert tgt_in[0] == BOS_ID and tgt_out[-1] == EOS_ID and tgt_in[1:] == tgt_out[:-1]
            rows.append((src, tgt_in + [EOS_ID]))
    assert sorted(rows) == sorted(PAIRS)


def test_bad_arguments_get_clear_errors():
    long_pair = ([BOS_ID] + [5] * 40 + [EOS_ID], [BOS_ID, EOS_ID])
    with pytest.raises(ValueError, match="index 1 with 42 tokens"):
        token_batches([PAIRS[0], long_pair], 32)
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches(PAIRS, 0)
    with pytest.raises(ValueError, match="BOS and EOS"):
        make_token_batches([([BOS_ID, 7, EOS_ID], [EOS_ID])], 32)
    assert token_batches([], 32) == []


# Fixed shapes for compiled training: a few padded lengths, one row count per length.
LENGTHS = (8, 16, 24)


def _padded(i: int) -> int:
    return max(len(PAIRS[i][0]), len(PAIRS[i][1]) - 1)


def test_bucket_lengths_minimise_the_padded_slots():
    sizes = [_padded(i) for i in range(len(PAIRS))]
    lengths = bucket_lengths(sizes, 3, multiple=4)
    assert len(lengths) == 3 and all(length % 4 == 0 for length in lengths)
    assert lengths[-1] >= max(sizes)

    def slots(ls):
        return sum(min(length for length in ls if length >= s) for s in sizes)

    # Brute force over every choice of 3 multiples of 4 that covers the longest size.
    top = lengths[-1]
    candidates = range(4, top + 1, 4)
    best = min(slots((a, b, top)) for a in candidates for b in candidates if a < b < top)
    assert slots(lengths) == best
    assert bucket_lengths(sizes, 1, multiple=8) == (8 * -(-max(sizes) // 8),)
    assert bucket_lengths([5, 5, 5], 4) == (8,)  # fewer lengths when more would not help


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_shape_batches_cover_every_example_once_within_the_budget(seed):
    max_tokens = 200
    pairs = [p for i, p in enumerate(PAIRS) if _padded(i) <= LENGTHS[-1]]
    batches = fixed_shape_batches(pairs, LENGTHS, max_tokens, seed=seed)
    real = [i for _, rows in batches for i in rows if i is not None]
    assert sorted(real) == list(range(len(pairs)))  # every example exactly once per epoch
    for length, rows in batches:
        assert length in LENGTHS and len(rows) == max_tokens // length  # one shape per length
        assert len(rows) * length <= max_tokens
        assert all(max(len(pairs[i][0]), len(pairs[i][1]) - 1) <= length for i in rows if i is not None)  # fmt: skip
    # only the very last batch cut (whatever its place after shuffling) has padding rows
    assert sum(None in rows for _, rows in batches) <= 1
    assert batches != fixed_shape_batches(pairs, LENGTHS, max_tokens, seed=seed + 1)


def test_make_fixed_shape_batches_pads_each_batch_to_its_length():
    pairs = [p for i, p in enumerate(PAIRS) if _padded(i) <= LENGTHS[-1]]
    batches = make_fixed_shape_batches(pairs, LENGTHS, 200, seed=0)
    shapes = {tuple(b.src.shape) for b in batches}
    assert shapes <= {(200 // length, length) for length in LENGTHS}
    rows = []
    for batch in batches:
        assert batch.src.shape == batch.tgt_in.shape == batch.tgt_out.shape
        for src, tgt_in, tgt_out in zip(batch.src, batch.tgt_in, batch.tgt_out, strict=True):
            if not bool((src != PAD_ID).any()):  # a padding-only row: all three sides empty
                assert not bool((tgt_in != PAD_ID).any()) and not bool((tgt_out != PAD_ID).any())
                continue
            tgt = [int(x) for x in tgt_in if x != PAD_ID] + [EOS_ID]
            assert [int(x) for x in tgt_out if x != PAD_ID] == tgt[1:]
            rows.append(([int(x) for x in src if x != PAD_ID], tgt))
    assert sorted(rows) == sorted(map(tuple, pairs))


def test_fixed_shape_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="longest bucket is 8"):
        fixed_shape_batches(PAIRS, (8,), 200)
    with pytest.raises(ValueError, match="at most max_tokens=16"):
        fixed_shape_batches(PAIRS, (8, 24), 16)
    with pytest.raises(ValueError, match="n_buckets"):
        bucket_lengths([3], 0)
    with pytest.raises(ValueError, match="no sizes"):
        bucket_lengths([], 2)
