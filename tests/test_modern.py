"""RoPE, RMSNorm, SwiGLU, grouped-query attention, sliding-window and linear attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tfx_course.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from tfx_course.modern import (
    GroupedQueryAttention,
    RMSNorm,
    SwiGLU,
    apply_rope,
    kv_cache_size,
    linear_attention,
    linear_attention_quadratic,
    rope_angles,
    sliding_window_attention,
    sliding_window_mask,
    swiglu_width,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- RoPE --------------------------------------------------------------------------------


def _rope_by_complex_numbers(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """The paper's formula: pair (2i, 2i+1) is the complex number x_2i + i x_2i+1, times e^(i t theta_i)."""
    T, D = x.shape[-2:]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * theta  # (T, D/2)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], D // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


def _rope_by_rotation_matrices(x: torch.Tensor) -> torch.Tensor:
    """Multiply each position's vector by its block-diagonal rotation matrix R_t."""
    T, D = x.shape[-2:]
    out = torch.empty_like(x, dtype=torch.float64)
    for t in range(T):
        R = torch.zeros(D, D, dtype=torch.float64)
        for i in range(D // 2):
            a = t * 10000.0 ** (-2 * i / D)
            R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor(
                [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64
            )
        out[..., t, :] = x[..., t, :].double() @ R.T
    return out


def test_rope_equals_the_complex_number_formula_and_the_rotation_matrices():
    x = _randn(2, 3, 7, 8)  # (B, H, T, D)
    assert torch.allclose(apply_rope(x).double(), _rope_by_complex_numbers(x), atol=1e-5)
    assert torch.allclose(apply_rope(x).double(), _rope_by_rotation_matrices(x), atol=1e-5)


def test_rope_keeps_lengths_and_leaves_position_0_alone():
    x = _randn(1, 2, 5, 16)
    rotated = apply_rope(x)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(rotated[..., 0, :], x[..., 0, :])
    assert not torch.allclose(rotated[..., 1, :], x[..., 1, :])


def test_rope_scores_depend_only_on_the_offset():
    # The same query and key vectors placed at positions (m, n) and (m + s, n + s) score alike.
    D, T = 16, 40
    q_vec, k_vec = _randn(D, seed=1), _randn(D, seed=2)
    q = apply_rope(q_vec.expand(T, D).clone())  # (T, D): the same query at every position
    k = apply_rope(k_vec.expand(T, D).clone())
    scores = q @ k.T  # (T, T): entry (m, n) is the score of query at m with key at n
    for offset in (-7, 0, 3, 20):
        diagonal = scores.diagonal(-offset)  # every (m, n) with m - n = offset
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    assert not torch.allclose(scores.diagonal(0)[0], scores.diagonal(-3)[0])


def test_rope_offset_continues_the_positions():
    x = _randn(1, 1, 10, 8)
    assert torch.allclose(apply_rope(x)[..., 4:, :], apply_rope(x[..., 4:, :], offset=4), atol=1e-6)


def test_rope_rejects_odd_widths():
    with pytest.raises(ValueError, match="d_head must be even"):
        rope_angles(4, 7)


# --- RMSNorm and SwiGLU ------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_rms_norm_equals_torch_rms_norm(fused):
    ours = RMSNorm(16, eps=1e-6, fused=fused)
    with torch.no_grad():
        ours.weight.copy_(1 + 0.3 * _randn(16, seed=3))
    reference = nn.RMSNorm(16, eps=1e-6)
    reference.load_state_dict(ours.state_dict())
    x = 3 * _randn(2, 5, 16) + 1
    assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_rms_norm_does_not_centre_unlike_layer_norm():
    x = _randn(4, 8) + 5
    y = RMSNorm(8)(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4), atol=1e-4)
    assert (y.mean(-1).abs() > 0.5).all()  # the mean of x stays visible


def test_swiglu_shapes_and_a_by_hand_computation():
    torch.manual_seed(0)
    ffn = SwiGLU(8, 12)
    x = _randn(2, 3, 8)
    W1, W3, W2 = ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight
    gate = x @ W1.T
    by_hand = ((gate / (1 + torch.exp(-gate))) * (x @ W3.T)) @ W2.T
    assert ffn(x).shape == (2, 3, 8)
    assert torch.allclose(ffn(x), by_hand, atol=1e-6)
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 8 * 12


def test_swiglu_width_matches_a_two_matrix_ffn():
    assert swiglu_width(64, 256) == 168  # 2/3 * 256 = 170.7 -> a multiple of 8
    assert abs(3 * 64 * swiglu_width(64, 256) - 2 * 64 * 256) / (2 * 64 * 256) < 0.02


# --- grouped-query attention -----------------------------------------------------------------


def _inputs(B=2, T=5, C=16, seed=0):
    return _randn(B, T, C, seed=seed)


def test_gqa_with_as_many_groups_as_heads_equals_multi_head_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4)
    gqa = GroupedQueryAttention(16, 4, n_kv_heads=4)
    gqa.load_state_dict(mha.state_dict())  # the same names and shapes
    x, mask = _inputs(), causal_mask(5)
    out_mha, w_mha = mha(x, x, x, mask)
    out_gqa, w_gqa = gqa(x, x, x, mask)
    assert torch.allclose(out_gqa, out_mha, atol=1e-6) and torch.allclose(w_gqa, w_mha)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_gqa_equals_torch_sdpa_with_enable_gqa_and_mha_with_repeated_kv_weights(n_kv_heads):
    torch.manual_seed(0)
    gqa = GroupedQueryAttention(16, 4, n_kv_heads=n_kv_heads)
    x = _inputs()
    out, _ = gqa(x, x, x, causal=True)
    # PyTorch's own grouped attention
    q = gqa.q_proj(x).view(2, 5, 4, 4).transpose(1, 2)
    k = gqa.k_proj(x).view(2, 5, n_kv_heads, 4).transpose(1, 2)
    v = gqa.v_proj(x).view(2, 5, n_kv_heads, 4).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(out, gqa.out_proj(ref.transpose(1, 2).reshape(2, 5, 16)), atol=1e-5)
    # multi-head attention whose key/value heads are copies of the shared ones
    mha = MultiHeadAttention(16, 4)
    state = gqa.state_dict()
    for name in ("k_proj", "v_proj"):
        W, b = state[f"{name}.weight"].view(n_kv_heads, 4, 16), state[f"{name}.bias"].view(n_kv_heads, 4)  # fmt: skip
        state[f"{name}.weight"] = W.repeat_interleave(4 // n_kv_heads, 0).reshape(16, 16)
        state[f"{name}.bias"] = b.repeat_interleave(4 // n_kv_heads, 0).reshape(16)
    mha.load_state_dict(state)
    assert torch.allclose(out, mha(x, x, x, causal_mask(5))[0], atol=1e-5)


def test_gqa_with_one_group_is_multi_query_attention():
    torch.manual_seed(0)
    mqa = GroupedQueryAttention(16, 4, n_kv_heads=1)
    x = _inputs()
    k, v = mqa.k_proj(x)[:, None], mqa.v_proj(x)[:, None]  # (B, 1, S, D): one key/value head
    q = mqa.q_proj(x).view(2, 5, 4, 4).transpose(1, 2)  # (B, H, T, D)
    heads, _ = scaled_dot_product_attention(q, k, v)  # k, v broadcast over the 4 query heads
    by_hand = mqa.out_proj(heads.transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(mqa(x, x, x)[0], by_hand, atol=1e-6)
    assert mqa.k_proj.weight.shape == (4, 16)  # one head of d_head = 4


def test_kv_cache_size_is_stated_and_shrinks_with_the_groups():
    # 2 (keys and values) * 6 layers * 8 heads * 64 features * 1024 positions
    assert kv_cache_size(6, 8, 64, 1024) == 2 * 6 * 8 * 64 * 1024 == 6_291_456
    assert kv_cache_size(6, 2, 64, 1024) * 4 == kv_cache_size(6, 8, 64, 1024)
    assert kv_cache_size(6, 1, 64, 1024, batch=3) == 3 * 786_432


def test_gqa_rejects_groups_that_do_not_divide_the_heads():
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        GroupedQueryAttention(16, 4, n_kv_heads=3)


# --- sliding-window attention ---------------------------------------------------------------


def _by_hand_window(T: int, W: int, causal: bool) -> torch.Tensor:
    mask = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        for s in range(T):
            mask[t, s] = (0 <= t - s < W) if causal else abs(t - s) < W
    return mask


@pytest.mark.parametrize(("T", "W"), [(6, 1), (6, 3), (9, 4), (5, 8)])
def test_sliding_window_mask_equals_a_mask_written_by_hand(T, W):
    for causal in (True, False):
        assert torch.equal(sliding_window_mask(T, W, causal=causal), _by_hand_window(T, W, causal))
    combined = sliding_window_mask(T, W, causal=False) & causal_mask(T)
    assert torch.equal(combined, sliding_window_mask(T, W))
    assert sliding_window_mask(T, W).sum(-1).tolist() == [min(t + 1, W) for t in range(T)]


def test_a_window_as_long_as_the_sequence_is_the_causal_mask():
    assert torch.equal(sliding_window_mask(7, 7), causal_mask(7))


@pytest.mark.parametrize(("T", "W"), [(16, 4), (13, 4), (5, 8), (1, 3), (12, 1)])
def test_blocked_sliding_window_attention_equals_masked_full_attention(T, W):
    q, k, v = _randn(2, 3, T, 8, seed=1), _randn(2, 3, T, 8, seed=2), _randn(2, 3, T, 6, seed=3)
    full, _ = scaled_dot_product_attention(q, k, v, sliding_window_mask(T, W))
    assert torch.allclose(sliding_window_attention(q, k, v, W), full, atol=1e-5)


# --- linear attention ---------------------------------------------------------------------


def test_linear_attention_equals_its_quadratic_form():
    q, k, v = _randn(2, 3, 7, 8, seed=1), _randn(2, 3, 9, 8, seed=2), _randn(2, 3, 9, 5, seed=3)
    out, weights = linear_attention_quadratic(q, k, v)
    assert torch.allclose(linear_attention(q, k, v), out, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 7), atol=1e-5)
    assert (weights > 0).all()


def test_causal_linear_attention_prefix_sums_equal_the_masked_quadratic_form():
    q, k, v = _randn(2, 3, 10, 8, seed=1), _randn(2, 3, 10, 8, seed=2), _randn(2, 3, 10, 5, seed=3)
    out, weights = linear_attention_quadratic(q, k, v, causal_mask(10))
    assert torch.allclose(linear_attention(q, k, v, causal=True), out, atol=1e-5)
    assert (weights.triu(1) == 0).all()


def test_causal_linear_attention_does_not_see_the_future():
    q, k, v = _randn(1, 1, 8, 4, seed=1), _randn(1, 1, 8, 4, seed=2), _randn(1, 1, 8, 4, seed=3)
    changed = v.clone()
    changed[..., 5:, :] += 10
    a, b = linear_attention(q, k, v, causal=True), linear_attention(q, k, changed, causal=True)
    assert torch.allclose(a[..., :5, :], b[..., :5, :]) and not torch.allclose(a, b)


def test_linear_attention_kernel_in_the_module_is_causal():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(16, 4, kernel="linear")
    x = _inputs()
    y = x.clone()
    y[:, 3:] += 1
    a, b = attn(x, x, x, causal=True)[0], attn(y, y, y, causal=True)[0]
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="takes no mask"):
        attn(x, x, x, causal_mask(5))
