"""Tests for tfx_course.layers: shapes, formulas, parity with PyTorch's layers, switches, errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfx_course.attention import causal_mask, padding_mask, to_nn_attn_mask
from tfx_course.layers import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    LayerNorm,
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)

B, S, T, C, H, D_FF = 2, 6, 5, 16, 4, 32


def to_torch_state_dict(ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename our layers' parameters to those of nn.TransformerEncoderLayer/DecoderLayer/Transformer.

    PyTorch packs the query, key and value projections into one ``in_proj`` matrix (rows in
    that order), calls cross-attention ``multihead_attn`` and has no ``ff`` submodule; the
    norms and ``out_proj`` already share our names.
    """
    theirs: dict[str, Tensor] = {}
    for name, value in ours.items():
        prefix, _, leaf = name.rpartition(".")  # e.g. "layers.0.self_attn.q_proj", "weight"
        if prefix.endswith(("k_proj", "v_proj")):
            continue  # packed together with q_proj below
        if prefix.endswith("q_proj"):
            attn = prefix.removesuffix("q_proj")  # e.g. "layers.0.self_attn."
            parts = [ours[f"{attn}{p}_proj.{leaf}"] for p in "qkv"]
            name, value = f"{attn}in_proj_{leaf}", torch.cat(parts)
        name = name.replace("cross_attn.", "multihead_attn.").replace("ff.linear", "linear")
        theirs[name] = value
    return theirs


def seeded_layer(cls: type, norm_first: bool, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    layer = cls(C, H, D_FF, norm_first=norm_first, **kwargs).eval()
    with torch.no_grad():  # make the norms' parameters non-trivial, so their copy is tested
        for module in layer.modules():
            if isinstance(module, LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return layer


@pytest.fixture
def x() -> Tensor:
    return torch.randn(B, S, C, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def keep() -> Tensor:
    """Real tokens; the second sequence ends in two padded positions."""
    return torch.tensor([[True] * S, [True] * (S - 2) + [False] * 2])


# --- embeddings and positions --------------------------------------------------------


def test_token_embedding_scales_by_sqrt_d_model():
    embed = TokenEmbedding(10, C, pad_id=0)
    tokens = torch.tensor([[1, 2, 0], [9, 3, 3]])
    out = embed(tokens)
    assert out.shape == (2, 3, C)
    assert torch.allclose(out, embed.embedding.weight[tokens] * math.sqrt(C))
    assert torch.count_nonzero(out[0, 2]) == 0  # the pad row starts at zero


def test_token_embedding_rejects_ids_outside_vocabulary():
    with pytest.raises(ValueError, match=r"\[0, 10\).*10"):
        TokenEmbedding(10, C)(torch.tensor([[1, 10]]))
    with pytest.raises(TypeError, match="integer ids"):
        TokenEmbedding(10, C)(torch.tensor([[1.0, 2.0]]))


def test_sinusoidal_encoding_matches_the_formula():
    max_len, d_model = 12, 8
    expected = np.zeros((max_len, d_model))
    for pos in range(max_len):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            expected[pos, 2 * i] = math.sin(angle)
            expected[pos, 2 * i + 1] = math.cos(angle)
    pe = sinusoidal_encoding(max_len, d_model)
    assert pe.dtype == torch.float32 and pe.shape == (max_len, d_model)
    np.testing.assert_allclose(pe.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_sinusoidal_offset_is_a_fixed_rotation_per_frequency(k):
    """PE[t + k] is PE[t] rotated, pair by pair, by an angle that depends on k but not on t."""
    pe = sinusoidal_encoding(20, C).double().numpy()
    for i in range(C // 2):
        now = pe[: 20 - k, 2 * i : 2 * i + 2]  # (t, 2): (sin, cos) at t
        later = pe[k:, 2 * i : 2 * i + 2]  # (t, 2): the same pair at t + k
        # Solve later = now @ M for one 2x2 matrix shared by every t, then check it.
        m, *_ = np.linalg.lstsq(now, later, rcond=None)
        np.testing.assert_allclose(now @ m, later, atol=1e-6)  # the table is float32
        np.testing.assert_allclose(m.T @ m, np.eye(2), atol=1e-4)  # a rotation: orthogonal
        assert np.linalg.det(m) == pytest.approx(1.0, abs=1e-4)


def test_sinusoidal_module_adds_a_buffer_not_a_parameter(x):
    pos = SinusoidalPositionalEncoding(C, max_len=10)
    assert torch.allclose(pos(x), x + sinusoidal_encoding(10, C)[:S])
    assert list(pos.parameters()) == [] and "pe" not in pos.state_dict()


def test_learned_positions_are_trained_parameters(x):
    pos = LearnedPositionalEncoding(C, max_len=10)
    assert torch.allclose(pos(x), x + pos.pe[:S])
    pos(x).sum().backward()
    assert pos.pe.grad is not None and torch.count_nonzero(pos.pe.grad[S:]) == 0


@pytest.mark.parametrize("cls", [SinusoidalPositionalEncoding, LearnedPositionalEncoding])
def test_positions_past_max_len_raise(cls, x):
    with pytest.raises(ValueError, match=f"length {S} exceeds max_len=4"):
        cls(C, max_len=4)(x)


def test_sinusoidal_needs_even_d_model():
    with pytest.raises(ValueError, match="even, got 7"):
        sinusoidal_encoding(4, 7)


# --- LayerNorm and FeedForward -------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_layer_norm_equals_torch_layer_norm(fused, x):
    ours, theirs = LayerNorm(C, fused=fused), nn.LayerNorm(C)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())  # same parameter names
    x = (x * 3 + 2).requires_grad_()
    out = ours(x)
    torch.testing.assert_close(out, theirs(x))
    grads = torch.autograd.grad(out.square().sum(), [x, ours.weight, ours.bias])
    expected = torch.autograd.grad(theirs(x).square().sum(), [x, theirs.weight, theirs.bias])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_layer_norm_normalises_each_position(x):
    out = LayerNorm(C)(x * 5 + 3)
    torch.testing.assert_close(out.mean(-1), torch.zeros(B, S), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, correction=0), torch.ones(B, S), atol=1e-3, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_is_two_linears_around_the_activation(activation, x):
    ff = FeedForward(C, D_FF, activation=activation)
    act = {"relu": torch.relu, "gelu": F.gelu}[activation]
    expected = act(x @ ff.linear1.weight.T + ff.linear1.bias) @ ff.linear2.weight.T
    torch.testing.assert_close(ff(x), expected + ff.linear2.bias)


def test_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of.*'swish'"):
        FeedForward(C, D_FF, activation="swish")


# --- parity with PyTorch's layers ----------------------------------------------------


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_matches_torch(norm_first, x, keep):
    ours = seeded_layer(EncoderLayer, norm_first)
    theirs = nn.TransformerEncoderLayer(C, H, D_FF, 0.0, batch_first=True, norm_first=norm_first)
    theirs.load_state_dict(to_torch_state_dict(ours.state_dict()))
    theirs.eval()
    mask = padding_mask(keep)  # (B, 1, 1, S)
    # Gradients stay on, so PyTorch takes its general path rather than the inference kernel.
    expected = theirs(x, src_key_padding_mask=to_nn_attn_mask(keep))
    torch.testing.assert_close(ours(x, mask), expected)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_layer_matches_torch(norm_first, x, keep):
    ours = seeded_layer(DecoderLayer, norm_first)
    theirs = nn.TransformerDecoderLayer(C, H, D_FF, 0.0, batch_first=True, norm_first=norm_first)
    theirs.load_state_dict(to_torch_state_dict(ours.state_dict()))
    theirs.eval()
    tgt = x[:, :T] * 0.5
    tgt_keep = torch.tensor([[True] * T, [True] * (T - 1) + [False]])
    memory = torch.randn(B, S, C, generator=torch.Generator().manual_seed(2))
    self_mask = causal_mask(T) & padding_mask(tgt_keep)  # (B, 1, T, T)
    expected = theirs(
        tgt,
        memory,
        tgt_mask=to_nn_attn_mask(causal_mask(T)),
        tgt_key_padding_mask=to_nn_attn_mask(tgt_keep),
        memory_key_padding_mask=to_nn_attn_mask(keep),
    )
    torch.testing.assert_close(ours(tgt, memory, self_mask, padding_mask(keep)), expected)


# --- fused path, weights, switches ---------------------------------------------------


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize(
    "switches",
    [
        {"fused_attention": True},
        {"fused_norm": True},
        {"fused_attention": True, "fused_norm": True},
    ],
)
def test_fused_kernels_equal_the_explicit_path(norm_first, switches, x, keep):
    explicit = seeded_layer(DecoderLayer, norm_first)
    fused = seeded_layer(DecoderLayer, norm_first, **switches)
    memory, mask = x.flip(1), padding_mask(keep)
    self_mask = causal_mask(S) & mask
    torch.testing.assert_close(
        fused(x, memory, self_mask, mask), explicit(x, memory, self_mask, mask)
    )
    encoder = seeded_layer(EncoderLayer, norm_first)
    encoder_fused = seeded_layer(EncoderLayer, norm_first, **switches)
    torch.testing.assert_close(encoder_fused(x, mask), encoder(x, mask))
    # Each switch changes only its own kernel.
    norms = [m for m in encoder_fused.modules() if isinstance(m, LayerNorm)]
    assert all(n.fused == switches.get("fused_norm", False) for n in norms)
    assert encoder_fused.fused_attention == switches.get("fused_attention", False)


def test_encoder_weights_are_returned_not_stored(x, keep):
    layer = seeded_layer(EncoderLayer, True, fused_attention=True)
    attributes = {name: set(vars(m)) for name, m in layer.named_modules()}
    out, weights = layer.forward_with_weights(x, padding_mask(keep))
    torch.testing.assert_close(out, layer(x, padding_mask(keep)))
    assert weights.shape == (B, H, S, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, S))
    assert torch.count_nonzero(weights[1, :, :, S - 2 :]) == 0  # padded keys get no weight
    assert attributes == {name: set(vars(m)) for name, m in layer.named_modules()}


def test_decoder_weights_respect_causal_and_memory_masks(x, keep):
    layer = seeded_layer(DecoderLayer, False)
    tgt, memory = x[:, :T], x
    out, self_weights, cross_weights = layer.forward_with_weights(
        tgt, memory, causal_mask(T), padding_mask(keep)
    )
    torch.testing.assert_close(out, layer(tgt, memory, causal_mask(T), padding_mask(keep)))
    assert self_weights.shape == (B, H, T, T) and cross_weights.shape == (B, H, T, S)
    assert torch.count_nonzero(self_weights.triu(diagonal=1)) == 0  # no look at the future
    assert torch.count_nonzero(cross_weights[1, ..., S - 2 :]) == 0


@pytest.mark.parametrize("norm_first", [True, False])
def test_residual_false_drops_the_skip_connections(norm_first, x):
    layer = seeded_layer(EncoderLayer, norm_first, residual=False)
    norm1 = layer.norm1 if norm_first else nn.Identity()
    norm2 = layer.norm2 if norm_first else nn.Identity()
    h = layer.self_attn(norm1(x), norm1(x), norm1(x))[0]
    h = h if norm_first else layer.norm1(h)
    expected = layer.ff(norm2(h))
    expected = expected if norm_first else layer.norm2(expected)
    torch.testing.assert_close(layer(x), expected)


def test_layers_reject_bad_sizes():
    with pytest.raises(ValueError, match="d_model=16 is not divisible by n_heads=3"):
        EncoderLayer(C, 3, D_FF)
    with pytest.raises(ValueError, match="d_ff must be a positive integer, got 0"):
        DecoderLayer(C, H, 0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        EncoderLayer(C, H, D_FF, dropout=1.5)
