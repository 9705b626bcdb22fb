"""Tests for tfx_course.baselines: the LSTM and convolutional models, and the path-length probes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tfx_course import baselines as bl
from tfx_course.data.batching import make_batch
from tfx_course.data.synthetic import make_pairs, tokenizer_for
from tfx_course.decoding import beam_search, greedy_decode
from tfx_course.model import ModelConfig
from tfx_course.training import TrainConfig, fit

V = 12
PAD = 0


def _lstm(seed: int = 0, **changes) -> bl.LSTMSeq2Seq:
    torch.manual_seed(seed)
    sizes = dict(d_model=16, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, max_len=8)
    return bl.LSTMSeq2Seq(bl.RNNConfig(V, V, **(sizes | changes))).eval()


def _conv(seed: int = 0, kernel_size: int = 3) -> bl.ConvTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(V, V, d_model=16, n_heads=4, n_encoder_layers=2, n_decoder_layers=1,
                         d_ff=32, dropout=0.0, max_len=16)  # fmt: skip
    return bl.ConvTransformer(config, kernel_size).eval()


MODELS = {"lstm": _lstm, "conv": _conv}
SRC = torch.tensor([[1, 4, 5, 6, 7, 2], [1, 8, 9, 2, PAD, PAD], [1, 10, 2, PAD, PAD, PAD]])
TGT = torch.tensor([[1, 7, 6, 5, 4], [1, 9, 8, PAD, PAD], [1, 10, PAD, PAD, PAD]])


# --- configuration and input checks -----------------------------------------------------


def test_rnn_config_rejects_odd_width_and_bad_pad_id():
    with pytest.raises(ValueError, match="must be even"):
        bl.RNNConfig(V, V, d_model=15)
    with pytest.raises(ValueError, match="pad_id=12"):
        bl.RNNConfig(V, V, pad_id=12)
    with pytest.raises(ValueError, match="dropout"):
        bl.RNNConfig(V, V, dropout=1.0)


def test_lstm_rejects_left_padding_and_empty_sources():
    model = _lstm()
    with pytest.raises(ValueError, match="pad on the right"):
        model.encode(torch.tensor([[PAD, 1, 4, 2]]))
    with pytest.raises(ValueError, match="at least one real token"):
        model.encode(torch.tensor([[1, 4, 2], [PAD, PAD, PAD]]))
    with pytest.raises(ValueError, match="does not match src"):
        model.decode(TGT, model.encode(SRC)[:, :4], SRC)


def test_conv_layer_rejects_an_even_kernel_and_post_ln():
    with pytest.raises(ValueError, match="must be odd"):
        bl.ConvEncoderLayer(16, 32, kernel_size=4)
    config = ModelConfig(V, V, d_model=16, n_heads=4, d_ff=32, norm_first=False)
    with pytest.raises(ValueError, match="Pre-LN only"):
        bl.ConvTransformer(config)


# --- shapes and padding -----------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_shapes(name):
    model = MODELS[name]()
    memory = model.encode(SRC)
    assert memory.shape == (3, 6, 16)
    assert model.decode(TGT, memory, SRC).shape == (3, 5, V)
    assert model(SRC, TGT).shape == (3, 5, V)


@pytest.mark.parametrize("name", MODELS)
def test_source_padding_changes_no_real_position(name):
    model = MODELS[name]()
    padded = torch.cat([SRC, torch.full((3, 4), PAD)], dim=1)  # four more padding columns
    with torch.no_grad():
        real = SRC != PAD
        torch.testing.assert_close(model.encode(padded)[:, :6][real], model.encode(SRC)[real])
        torch.testing.assert_close(model(padded, TGT), model(SRC, TGT))


@pytest.mark.parametrize("name", MODELS)
def test_target_positions_before_t_ignore_later_tokens(name):
    model = MODELS[name]()
    changed = TGT.clone()
    changed[:, 3:] = 11  # new tokens from position 3 on
    with torch.no_grad():
        torch.testing.assert_close(model(SRC, changed)[:, :3], model(SRC, TGT)[:, :3])


def test_padded_source_positions_get_no_attention():
    model = _lstm()
    weights = model.attention_weights(SRC, TGT)  # (B, T, S)
    assert weights.shape == (3, 5, 6)
    assert torch.equal(
        weights[SRC[:, None, :].expand_as(weights) == PAD], torch.zeros(5 * 2 + 5 * 3)
    )
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))


def test_lstm_memory_is_zero_at_padding_and_holds_both_directions():
    model = _lstm(d_model=8, n_encoder_layers=1)
    memory = model.encode(SRC).detach()
    assert torch.equal(memory[SRC == PAD], torch.zeros(int((SRC == PAD).sum()), 8))
    # The backward half at the last real token has seen only that token: it equals the same
    # LSTM run backwards over the last token alone.
    lstm = model.encoder.lstm
    x = model.encoder.embed(torch.tensor([[2]]))  # the last real token is EOS for every row
    reverse = nn.LSTM(8, 4, batch_first=True)
    reverse.load_state_dict({k.replace("_reverse", ""): v for k, v in lstm.state_dict().items() if "reverse" in k})  # fmt: skip
    expected = reverse(x)[0][0, 0].detach()
    torch.testing.assert_close(memory[1, 3, 4:], expected)


# --- the attention step by hand ---------------------------------------------------------


def _attention_by_hand(h, memory, keep, W_a, W_c):
    """Luong's general attention, one number at a time, in float64."""
    B, T, C = h.shape
    S = memory.shape[1]
    out = torch.zeros(B, T, C, dtype=torch.float64)
    weights = torch.zeros(B, T, S, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            scores = {s: float(h[b, t] @ W_a @ memory[b, s]) for s in range(S) if keep[b, s]}
            top = max(scores.values())
            total = sum(math.exp(v - top) for v in scores.values())
            context = torch.zeros(C, dtype=torch.float64)
            for s, v in scores.items():
                weights[b, t, s] = math.exp(v - top) / total
                context += weights[b, t, s] * memory[b, s]
            out[b, t] = torch.tanh(W_c @ torch.cat([context, h[b, t]]))
    return out, weights


def test_luong_attention_equals_a_computation_by_hand():
    gen = torch.Generator().manual_seed(0)
    B, T, S, C = 2, 3, 5, 4
    h, memory = torch.randn(B, T, C, generator=gen), torch.randn(B, S, C, generator=gen)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    module = bl.LuongAttention(C)
    W_a, W_c = module.score_proj.weight.detach(), module.out_proj.weight.detach()
    expected_out, expected_weights = _attention_by_hand(
        h.double(), memory.double(), keep, W_a.double(), W_c.double()
    )
    with torch.no_grad():
        out, weights = module(h, module.keys(memory), memory, keep)
    torch.testing.assert_close(out.double(), expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.double(), expected_weights, atol=1e-6, rtol=1e-5)
    functional = bl.luong_attention(h, memory, keep, W_a, W_c)
    torch.testing.assert_close(functional[0], out)
    torch.testing.assert_close(functional[1], weights)


# --- caching and decoding ---------------------------------------------------------------


def test_lstm_decode_step_in_pieces_equals_decode():
    model = _lstm()
    with torch.no_grad():
        memory = model.encode(SRC)
        full = model.decode(TGT, memory, SRC)
        cache = model.start_cache(memory, SRC)
        pieces = []
        for start, size in ((0, 1), (1, 2), (3, 1), (4, 1)):
            logits, cache = model.decode_step(TGT[:, start : start + size], cache)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


def test_lstm_cache_reorder_follows_the_rows():
    model = _lstm()
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = model.start_cache(model.encode(SRC), SRC)
        _, cache = model.decode_step(TGT[:, :2], cache)
        moved, _ = model.decode_step(TGT[order, 2:3], cache.reorder(order))
        expected = model(SRC[order], TGT[order, :3])[:, 2:3]
    torch.testing.assert_close(moved, expected)
    same_source = cache.reorder(torch.tensor([0, 1, 2]), memory=False)
    assert same_source.memory is cache.memory and same_source.keys is cache.keys


def test_lstm_decode_step_rejects_a_batch_of_the_wrong_size():
    model = _lstm()
    cache = model.start_cache(model.encode(SRC), SRC)
    with pytest.raises(ValueError, match="B=3"):
        model.decode_step(TGT[:2, :1], cache)


@pytest.mark.parametrize("name", MODELS)
def test_greedy_and_beam_search_run_with_and_without_the_cache(name):
    model = MODELS[name](seed=3)
    cached = greedy_decode(model, SRC, max_len=7)
    assert cached.shape[0] == 3 and cached.shape[1] <= 7
    assert torch.equal(cached, greedy_decode(model, SRC, max_len=7, use_cache=False))
    beams = beam_search(model, SRC, beam_size=3, max_len=7)
    assert torch.equal(beams, beam_search(model, SRC, beam_size=3, max_len=7, use_cache=False))
    assert torch.equal(beam_search(model, SRC, beam_size=1, max_len=7), cached)  # K=1 is greedy


# --- training -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_fit_overfits_one_batch_and_greedy_decoding_reproduces_it(name):
    tokenizer = tokenizer_for("reversal")
    pairs = make_pairs("reversal", 8, seed=0, min_len=3, max_len=5)
    batch = make_batch(pairs, tokenizer, tokenizer)
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    if name == "lstm":
        model = bl.LSTMSeq2Seq(bl.RNNConfig(vocab, vocab, d_model=32, dropout=0.0, max_len=8))
    else:
        config = ModelConfig(vocab, vocab, d_model=32, n_heads=4, n_encoder_layers=1,
                             n_decoder_layers=1, d_ff=64, dropout=0.0, max_len=16)  # fmt: skip
        model = bl.ConvTransformer(config)
    config = TrainConfig(lr=1e-2, max_steps=150, warmup_steps=10, schedule="constant",
                         label_smoothing=0.0, batch_size=8)  # fmt: skip
    history = fit(model, [batch], config, progress=False)
    assert history.loss[-1] < 0.05 < history.loss[0]
    out = greedy_decode(model, batch.src, max_len=6)
    decoded = [tokenizer.decode(row.tolist()) for row in out]
    assert decoded == [target for _, target in pairs]


# --- the probes ---------------------------------------------------------------------------


def _reach_by_loop(layer, x, direction):
    """One backward pass per output position: the definition of gradient_reach."""
    norms = []
    for t in range(x.shape[1]):
        leaf = x.detach().clone().requires_grad_(True)
        y = layer(leaf)
        (grad,) = torch.autograd.grad(y[0, t] @ direction, leaf)
        norms.append(grad[0, 0].norm())
    return torch.stack(norms)


@pytest.mark.parametrize("kind", bl.PROBE_KINDS)
def test_gradient_reach_equals_one_backward_per_position(kind):
    stack = bl.probe_stack(kind, d_model=8, n_layers=2, n_heads=2).double()
    x = torch.randn(1, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    direction = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        bl.gradient_reach(stack, x, direction), _reach_by_loop(stack, x, direction)
    )
    assert bl.gradient_reach(stack, x).shape == (7,)


@pytest.mark.parametrize(("n_layers", "kernel_size"), [(1, 3), (2, 3), (3, 5)])
def test_cnn_gradient_is_exactly_zero_beyond_the_receptive_field(n_layers, kernel_size):
    radius = bl.receptive_radius(n_layers, kernel_size)
    assert radius == n_layers * (kernel_size - 1) // 2
    stack = bl.probe_stack("cnn", d_model=8, n_layers=n_layers, kernel_size=kernel_size).double()
    x = torch.randn(1, radius + 6, 8, dtype=torch.float64)
    reach = bl.gradient_reach(stack, x)
    assert bool((reach[: radius + 1] > 0).all())
    assert bool((reach[radius + 1 :] == 0).all())


def test_lstm_gradient_fades_with_distance_and_attention_does_not():
    x = torch.randn(1, 40, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lstm = bl.gradient_reach(bl.probe_stack("lstm", 16, 1).double(), x)
    assert bool((lstm > 0).all())
    assert lstm[-1] < lstm[1] / 1e3  # 39 recurrent steps: the signal has faded a thousandfold
    attention = bl.gradient_reach(bl.probe_stack("transformer", 16, 1).double(), x)
    far = attention[1:]  # distance 0 also has the residual path
    assert far.max() / far.min() < 10  # one step from every position: no fading with distance


def test_graph_depth_counts_the_longest_chain():
    x = torch.randn(3, requires_grad=True)
    assert bl.graph_depth(((x * 2) + 1).sin()) == 4  # AccumulateGrad, Mul, Add, Sin
    assert bl.graph_depth(x.sin() + x * 3 * 5) == 4  # the longer of two branches
    with pytest.raises(ValueError, match="require grad"):
        bl.graph_depth(torch.ones(2))


def test_lstm_steps_grow_with_length_and_attention_steps_do_not():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 8, batch_first=True)
    layer = bl.probe_stack("transformer", 8, 1, n_heads=2)

    def depths(fn):
        return [bl.graph_depth(fn(torch.randn(1, T, 8, requires_grad=True))) for T in (4, 8, 12)]

    recurrent = depths(lambda x: bl.unrolled_lstm(lstm, x))
    assert recurrent[1] - recurrent[0] == recurrent[2] - recurrent[1] > 0
    attention = depths(layer)
    assert attention[0] == attention[1] == attention[2]


def test_unrolled_lstm_equals_nn_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, batch_first=True)
    x = torch.randn(2, 7, 6)
    torch.testing.assert_close(bl.unrolled_lstm(lstm, x), lstm(x)[0])
    with pytest.raises(ValueError, match="num_layers=1"):
        bl.unrolled_lstm(nn.LSTM(6, 5, 2, batch_first=True), x)


def test_probe_stack_rejects_an_unknown_kind_and_a_batch_of_two():
    with pytest.raises(ValueError, match="kind must be one of"):
        bl.probe_stack("gru", 8, 1)
    with pytest.raises(ValueError, match=r"\(1, T, C\)"):
        bl.gradient_reach(bl.probe_stack("lstm", 8, 1), torch.randn(2, 5, 8))
