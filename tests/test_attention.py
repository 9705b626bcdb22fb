"""Tests for tfx_course.attention: shapes, properties, parity with PyTorch, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tfx_course.attention import (
    MultiHeadAttention,
    causal_mask,
    mask_scores,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
    to_nn_attn_mask,
)

B, H, T, S, D, C = 2, 4, 5, 6, 8, 16


@pytest.fixture
def qkv():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, D, generator=gen)
    k = torch.randn(B, H, S, D, generator=gen)
    v = torch.randn(B, H, S, D, generator=gen)
    return q, k, v


@pytest.fixture
def keep():
    """Second sequence has two padded positions at the end."""
    return torch.tensor([[True] * S, [True] * (S - 2) + [False] * 2])


# --- masks ---------------------------------------------------------------------------


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(4)
    assert mask.dtype == torch.bool and mask.shape == (4, 4)
    for t in range(4):
        for s in range(4):
            assert bool(mask[t, s]) == (s <= t)


def test_padding_mask_broadcasts_over_heads_and_queries(keep):
    mask = padding_mask(keep)
    assert mask.shape == (B, 1, 1, S)
    assert torch.equal(mask.expand(B, H, T, S)[1, 3, 2], keep[1])


def test_to_nn_attn_mask_inverts_polarity():
    mask = causal_mask(3)
    assert torch.equal(to_nn_attn_mask(mask), ~mask)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_causal_mask_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="positive integer"):
        causal_mask(size)


def test_padding_mask_rejects_token_ids_with_advice():
    with pytest.raises(TypeError, match="dtype torch.int64.*mask.bool"):
        padding_mask(torch.tensor([[5, 6, 0]]))


def test_padding_mask_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, S\).*\(2, 1, 3\)"):
        padding_mask(torch.ones(2, 1, 3, dtype=torch.bool))


def test_mask_fill_is_dtype_min_not_minus_inf():
    scores = torch.zeros(1, 3, dtype=torch.float16)
    filled = mask_scores(scores, torch.tensor([[True, False, True]]))
    assert filled[0, 1] == torch.finfo(torch.float16).min
    assert torch.isfinite(filled).all()


# --- scaled dot-product attention ----------------------------------------------------


def test_shapes_and_rows_sum_to_one(qkv):
    q, k, v = qkv
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (B, H, T, D) and weights.shape == (B, H, T, S)
    assert torch.allclose(weights.sum(-1), torch.ones(B, H, T))


def test_matches_formula_computed_elementwise(qkv):
    """An independent loop over one (b, h, t) triple, straight from the formula."""
    q, k, v = qkv
    out, weights = scaled_dot_product_attention(q, k, v)
    b, h, t = 1, 2, 3
    scores = torch.tensor([float(q[b, h, t] @ k[b, h, s]) / math.sqrt(D) for s in range(S)])
    expected = torch.exp(scores) / torch.exp(scores).sum()
    assert torch.allclose(weights[b, h, t], expected, atol=1e-6)
    assert torch.allclose(out[b, h, t], (expected[:, None] * v[b, h]).sum(0), atol=1e-5)


def test_blocked_positions_get_exactly_zero(qkv, keep):
    q, k, v = qkv
    mask = padding_mask(keep) & causal_mask(S)[:T]  # causal on a (T, S) grid
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    blocked = ~mask.expand(B, H, T, S)
    assert (weights[blocked] == 0).all()
    assert (weights[~blocked] > 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(B, H, T))


def test_fully_blocked_row_is_uniform_not_nan(qkv):
    q, k, v = qkv
    mask = torch.ones(T, S, dtype=torch.bool)
    mask[0] = False
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(weights).all()
    assert torch.allclose(weights[:, :, 0], torch.full((B, H, S), 1 / S))


def test_causal_outputs_ignore_the_future():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, H, T, D, generator=gen)
    out, _ = scaled_dot_product_attention(x, x, x, causal_mask(T))
    t = 2
    changed = x.clone()
    changed[:, :, t + 1 :] = torch.randn(B, H, T - t - 1, D, generator=gen)
    out2, _ = scaled_dot_product_attention(changed, changed, changed, causal_mask(T))
    assert torch.equal(out[:, :, : t + 1], out2[:, :, : t + 1])
    assert not torch.allclose(out[:, :, t + 1 :], out2[:, :, t + 1 :])


def test_padding_does_not_change_real_positions(qkv):
    q, k, v = qkv
    real = 4
    out_short, _ = scaled_dot_product_attention(q, k[:, :, :real], v[:, :, :real])
    keep = torch.tensor([[True] * real + [False] * (S - real)] * B)
    out_padded, _ = scaled_dot_product_attention(q, k, v, padding_mask(keep))
    assert torch.allclose(out_short, out_padded, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_parity_with_torch_sdpa(qkv, keep, masked):
    q, k, v = qkv
    mask = padding_mask(keep) & causal_mask(S)[:T] if masked else None
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(out, expected, atol=1e-6)


def test_dropout_keeps_weights_but_changes_output(qkv):
    q, k, v = qkv
    torch.manual_seed(0)
    out, weights = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    plain, plain_weights = scaled_dot_product_attention(q, k, v)
    assert torch.allclose(weights, plain_weights)
    assert not torch.allclose(out, plain)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((2, 5, 8), (2, 6, 4), (2, 6, 8)), r"last dimension d_k.*\(2, 5, 8\).*\(2, 6, 4\)"),
        (((2, 5, 8), (2, 6, 8), (2, 7, 8)), r"same number of positions S"),
        (((8,), (6, 8), (6, 8)), r"q must have shape \(\.\.\., length, dim\)"),
    ],
)
def test_shape_errors_say_what_was_passed(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_non_boolean_masks_are_rejected(qkv, dtype):
    q, k, v = qkv
    with pytest.raises(TypeError, match="must be boolean with True = may attend"):
        scaled_dot_product_attention(q, k, v, torch.ones(T, S, dtype=dtype))


def test_mask_with_wrong_shape_is_rejected(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"does not broadcast.*\(2, 4, 5, 6\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(T, T, dtype=torch.bool))


# --- heads and the module ------------------------------------------------------------


def test_split_and_merge_heads_round_trip():
    x = torch.arange(B * T * C, dtype=torch.float32).view(B, T, C)
    heads = split_heads(x, H)
    assert heads.shape == (B, H, T, C // H)
    # head h holds features h*D .. (h+1)*D of every position
    assert torch.equal(heads[1, 2, 3], x[1, 3, 2 * (C // H) : 3 * (C // H)])
    assert torch.equal(merge_heads(heads), x)


def _module(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MultiHeadAttention(C, H, **kwargs).eval()


def _copy_into_torch(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    theirs = nn.MultiheadAttention(C, H, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.load_state_dict(ours.out_proj.state_dict())
    return theirs


def test_module_shapes_and_parameter_count():
    mha = _module()
    x = torch.randn(B, T, C)
    memory = torch.randn(B, S, C)
    out, weights = mha(x, memory, memory)
    assert out.shape == (B, T, C) and weights.shape == (B, H, T, S)
    assert sum(p.numel() for p in mha.parameters()) == 4 * (C * C + C)
    assert sum(p.numel() for p in _module(bias=False).parameters()) == 4 * C * C


@pytest.mark.parametrize("masked", [False, True])
def test_parity_with_nn_multihead_attention(masked, keep):
    ours = _module()
    theirs = _copy_into_torch(ours)
    gen = torch.Generator().manual_seed(2)
    x, memory = torch.randn(B, T, C, generator=gen), torch.randn(B, S, C, generator=gen)
    if masked:
        rule = causal_mask(S)[:T]
        out, weights = ours(x, memory, memory, padding_mask(keep) & rule)
        expected, expected_weights = theirs(
            x,
            memory,
            memory,
            attn_mask=to_nn_attn_mask(rule),
            key_padding_mask=to_nn_attn_mask(keep),
        )
    else:
        out, weights = ours(x, memory, memory)
        expected, expected_weights = theirs(x, memory, memory)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(weights.mean(1), expected_weights, atol=1e-6)  # torch averages heads


def test_unconverted_mask_gives_a_different_answer(keep):
    """The polarity trap: passing our mask straight to nn.MultiheadAttention is wrong."""
    ours = _module()
    theirs = _copy_into_torch(ours)
    x = torch.randn(B, S, C)
    out, _ = ours(x, x, x, padding_mask(keep))
    wrong, _ = theirs(x, x, x, key_padding_mask=keep)
    assert not torch.allclose(out[1], wrong[1], atol=1e-3)


def test_fused_path_equals_explicit_path(keep):
    mha = _module()
    x = torch.randn(B, S, C)
    mask = padding_mask(keep) & causal_mask(S)
    explicit, _ = mha(x, x, x, mask)
    fused, weights = mha(x, x, x, mask, need_weights=False)
    assert weights is None
    assert torch.allclose(explicit, fused, atol=1e-6)
    fully_blocked = torch.zeros(S, S, dtype=torch.bool)
    assert torch.allclose(
        mha(x, x, x, fully_blocked)[0],
        mha(x, x, x, fully_blocked, need_weights=False)[0],
        atol=1e-6,
    )


def test_module_gradients_reach_every_parameter():
    mha = _module()
    x = torch.randn(B, T, C)
    out, _ = mha(x, x, x, causal_mask(T))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mha.parameters())


def test_indivisible_sizes_are_rejected():
    with pytest.raises(ValueError, match="d_model=100 is not divisible by n_heads=3"):
        MultiHeadAttention(100, 3)


def test_sequence_first_input_is_rejected_with_advice():
    mha = _module()
    with pytest.raises(ValueError, match="batch first"):
        mha(torch.randn(T, B, C), torch.randn(S, B, C), torch.randn(S, B, C))
    with pytest.raises(ValueError, match=r"d_model=16\) \(batch first\)"):
        mha(torch.randn(B, T, C + 1), torch.randn(B, S, C), torch.randn(B, S, C))


def test_mismatched_key_value_lengths_are_rejected():
    mha = _module()
    with pytest.raises(ValueError, match="must agree on B and S"):
        mha(torch.randn(B, T, C), torch.randn(B, S, C), torch.randn(B, S + 1, C))
