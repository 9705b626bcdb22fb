"""Tests for tfx_course.model: config validation, shapes, parity with nn.Transformer, properties."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_layers import to_torch_state_dict
from torch import Tensor, nn

from tfx_course.attention import causal_mask, to_nn_attn_mask
from tfx_course.model import ModelConfig, Transformer, eval_mode, source_mask, target_mask

SRC_V, TGT_V, PAD = 11, 13, 0
CONFIG = ModelConfig(SRC_V, TGT_V, d_model=16, n_heads=4, n_encoder_layers=2,
                     n_decoder_layers=2, d_ff=32, dropout=0.0, max_len=16)  # fmt: skip


def make_model(config: ModelConfig = CONFIG, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config).eval()


@pytest.fixture
def src() -> Tensor:
    """Two source sentences; the second has three padded positions."""
    return torch.tensor([[4, 7, 2, 9, 5, 3, 8], [6, 1, 10, 5, PAD, PAD, PAD]])


@pytest.fixture
def tgt() -> Tensor:
    """Two target prefixes; the second has one padded position."""
    return torch.tensor([[1, 5, 12, 3, 9, 4], [1, 8, 2, 11, 7, PAD]])


def copy_to_torch_transformer(ours: Transformer, theirs: nn.Transformer) -> None:
    """Load our encoder and decoder stacks into nn.Transformer (which has no embeddings or head).

    nn.Transformer always ends each stack in a LayerNorm; ours does only with Pre-LN, so a
    Post-LN comparison removes PyTorch's (its stacks skip a norm that is None).
    """
    if not ours.config.norm_first:
        theirs.encoder.norm = None
        theirs.decoder.norm = None
    stacks = {
        f"{name}.{key}": value
        for name in ("encoder", "decoder")
        for key, value in getattr(ours, name).state_dict().items()
        if key.startswith(("layers.", "norm."))
    }
    theirs.load_state_dict(to_torch_state_dict(stacks))  # strict: every tensor has a home


# --- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"d_model": 18, "n_heads": 4}, ValueError, "d_model=18 is not divisible by n_heads=4"),
        ({"positional": "rotary"}, ValueError, "positional must be one of .*'rotary'"),
        ({"n_encoder_layers": 0}, ValueError, "n_encoder_layers must be a positive integer, got 0"),
        ({"d_ff": 2.5}, ValueError, "d_ff must be a positive integer, got 2.5"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        (
            {"pad_id": 11},
            ValueError,
            r"pad_id=11 must be a token id of both vocabularies, in \[0, 11\)",
        ),
        (
            {"d_model": 15, "n_heads": 3},
            ValueError,
            "sinusoidal positions need an even d_model, got d_model=15",
        ),
        ({"norm_first": "yes"}, TypeError, "norm_first must be True or False"),
    ],
)
def test_invalid_configs_raise_clear_errors(change, error, message):
    with pytest.raises(error, match=message):
        dataclasses.replace(CONFIG, **change)


def test_config_is_frozen_and_presets_are_valid():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.d_model = 32
    assert CONFIG.d_head == 4
    tiny, base = ModelConfig.tiny(30, 40), ModelConfig.base(8000, 6000)
    assert tiny.src_vocab_size == 30 and tiny.tgt_vocab_size == 40
    assert base.d_model == 512 and base.d_head == 64 and base.fused_attention
    assert base.n_encoder_layers == base.n_decoder_layers == 6 and base.dropout == 0.3
    course = ModelConfig.course(6000, 6000)
    assert course.d_model == 128 and course.n_encoder_layers == 2 and course.tie_embeddings
    assert Transformer(tiny).num_parameters() < 300_000  # small enough for a CPU lesson


# --- shapes, masks, attention maps ---------------------------------------------------


def test_shapes_of_forward_encode_decode(src, tgt):
    model = make_model()
    logits = model(src, tgt)
    assert logits.shape == (2, 6, TGT_V)
    memory = model.encode(src)
    assert memory.shape == (2, 7, 16)
    torch.testing.assert_close(model.decode(tgt, memory, src), logits)


def test_masks_are_built_from_tokens(src, tgt):
    assert torch.equal(source_mask(src, PAD), (src != PAD)[:, None, None, :])
    mask = target_mask(tgt, PAD)
    assert mask.shape == (2, 1, 6, 6)
    for b in range(2):
        for t in range(6):
            for s in range(6):
                assert bool(mask[b, 0, t, s]) == (s <= t and bool(tgt[b, s] != PAD))


def test_attention_maps_in_eval_mode_without_gradients(src, tgt):
    model = make_model(dataclasses.replace(CONFIG, dropout=0.5, fused_attention=True)).train()
    maps = model.attention_maps(src, tgt)
    assert model.training  # mode restored
    expected = {"encoder": (2, 4, 7, 7), "decoder_self": (2, 4, 6, 6), "cross": (2, 4, 6, 7)}
    assert set(maps) == set(expected)
    for key, shape in expected.items():
        assert len(maps[key]) == 2
        for weights in maps[key]:
            assert weights.shape == shape and not weights.requires_grad
            torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))
    assert torch.count_nonzero(maps["cross"][1][1, :, :, 4:]) == 0  # padded source ignored
    assert torch.count_nonzero(maps["decoder_self"][0].triu(diagonal=1)) == 0
    torch.testing.assert_close(model.attention_maps(src, tgt)["cross"][0], maps["cross"][0])


# --- parity with nn.Transformer ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_matches_torch(norm_first, src, tgt):
    ours = make_model(dataclasses.replace(CONFIG, norm_first=norm_first))
    theirs = nn.Transformer(16, 4, 2, 2, 32, 0.0, batch_first=True, norm_first=norm_first)
    copy_to_torch_transformer(ours, theirs)
    theirs.eval()
    x_src = ours.encoder.positional(ours.encoder.embed(src))
    x_tgt = ours.decoder.positional(ours.decoder.embed(tgt))
    src_blocked = to_nn_attn_mask(src != PAD)
    out = theirs(
        x_src,
        x_tgt,
        tgt_mask=to_nn_attn_mask(causal_mask(tgt.shape[1])),
        src_key_padding_mask=src_blocked,
        tgt_key_padding_mask=to_nn_attn_mask(tgt != PAD),
        memory_key_padding_mask=src_blocked,
    )
    torch.testing.assert_close(ours(src, tgt), ours.lm_head(out))


# --- properties ----------------------------------------------------------------------


def test_logits_up_to_t_ignore_later_target_tokens(src, tgt):
    model = make_model()
    logits = model(src, tgt)
    for t in range(tgt.shape[1] - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 5) % (TGT_V - 1) + 1  # new non-pad tokens
        torch.testing.assert_close(model(src, changed)[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(model(src, changed)[:, t + 1 :], logits[:, t + 1 :])


def test_source_padding_does_not_change_real_logits(src, tgt):
    model = make_model()
    logits = model(src, tgt)
    # Each sentence alone, without padding, gives the same logits as in the padded batch.
    for b, length in enumerate([7, 4]):
        alone = model(src[b : b + 1, :length], tgt[b : b + 1])
        torch.testing.assert_close(alone, logits[b : b + 1])
    extra = F.pad(src, (0, 3), value=PAD)  # three more padded columns for everyone
    torch.testing.assert_close(model(extra, tgt), logits)


def test_fused_attention_equals_explicit(src, tgt):
    explicit = make_model().train()
    fused = Transformer(dataclasses.replace(CONFIG, fused_attention=True)).train()
    fused.load_state_dict(explicit.state_dict())
    outputs, grads = [], []
    for model in (explicit, fused):
        logits = model(src, tgt)
        logits.square().mean().backward()
        outputs.append(logits)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0])
    for fused_grad, explicit_grad in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(fused_grad, explicit_grad)


@pytest.mark.parametrize("fused", [False, True])
def test_bfloat16_autocast_stays_finite_and_close(src, tgt, fused):
    # The GPU preset trains under bf16 autocast; CPU autocast runs the same dtype paths
    # (masked fills, softmax, LayerNorm) so a NaN or a float32-only operation shows up here.
    model = make_model(dataclasses.replace(CONFIG, fused_attention=fused))
    reference = model(src, tgt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, tgt)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    # bf16 keeps 8 bits of mantissa: errors of a few 1e-2 on logits of size ~1 are expected.
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)
    logits.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_weight_tying_shares_one_tensor(src, tgt):
    untied = make_model()
    tied = make_model(dataclasses.replace(CONFIG, tie_embeddings=True))
    assert tied.lm_head.weight is tied.decoder.embed.embedding.weight
    assert tied.num_parameters() == untied.num_parameters() - TGT_V * 16
    tied(src, tgt).sum().backward()  # both uses add into the one gradient
    assert tied.decoder.embed.embedding.weight.grad is tied.lm_head.weight.grad


def test_positional_none_makes_the_encoder_permutation_equivariant():
    src = torch.tensor([[4, 7, 2, 9, 5]])
    perm = torch.tensor([3, 0, 4, 1, 2])
    plain = make_model(dataclasses.replace(CONFIG, positional="none"))
    torch.testing.assert_close(plain.encode(src[:, perm]), plain.encode(src)[:, perm])
    for kind in ("sinusoidal", "learned"):
        model = make_model(dataclasses.replace(CONFIG, positional=kind))
        assert not torch.allclose(model.encode(src[:, perm]), model.encode(src)[:, perm])


def test_tiny_model_overfits_one_batch():
    """Reverse 8 random sequences: a working model drives the loss near zero in 100 steps."""
    gen = torch.Generator().manual_seed(0)
    config = dataclasses.replace(
        CONFIG, d_model=32, n_encoder_layers=1, n_decoder_layers=1, d_ff=64
    )
    model = make_model(config).train()
    src = torch.randint(3, SRC_V, (8, 6), generator=gen)
    tgt = torch.cat([torch.ones(8, 1, dtype=torch.long), src.flip(1)], dim=1)  # BOS=1, reversed
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and kind to parallel tests
    try:
        for _ in range(100):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(src, tgt_in).reshape(-1, TGT_V), tgt_out.reshape(-1))
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05
    assert torch.equal(model.eval()(src, tgt_in).argmax(-1), tgt_out)


# --- errors --------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(src, tgt):
    model = make_model()
    with pytest.raises(ValueError, match=r"src must be a \(B, length\) tensor"):
        model(src[0], tgt)
    with pytest.raises(ValueError, match="same number of sequences, got 1 and 2"):
        model(src[:1], tgt)
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model(src.repeat(1, 3), tgt)
    with pytest.raises(ValueError, match="token ids must be in"):
        model(src, tgt + TGT_V)
    with pytest.raises(ValueError, match="memory .* does not match src"):
        model.decode(tgt, model.encode(src), src[:, :5])


def test_fused_attention_switches_both_kernels_and_the_device_is_the_weights():
    model = Transformer(dataclasses.replace(CONFIG, fused_attention=True))
    layers = [*model.encoder.layers, *model.decoder.layers]
    assert all(layer.fused_attention and layer.fused_norm for layer in layers)
    assert model.encoder.norm.fused and model.decoder.norm.fused
    plain = Transformer(CONFIG)
    assert not any(layer.fused_attention or layer.fused_norm for layer in plain.decoder.layers)
    assert model.device == torch.device("cpu") == model.lm_head.weight.device


def test_eval_mode_restores_the_mode_even_after_an_error():
    model = Transformer(CONFIG).train()
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model):
        assert not model.training and not model.decoder.layers[0].training
        raise RuntimeError("inside")
    assert model.training
    with eval_mode(model.eval()):
        pass
    assert not model.training
