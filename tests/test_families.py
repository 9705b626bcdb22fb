"""The decoder-only language model and the Vision Transformer built from the course's blocks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tfx_course.attention import causal_mask
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, CharTokenizer
from tfx_course.families import (
    DecoderOnlyLM,
    LMConfig,
    NeedleTask,
    VisionTransformer,
    ViTConfig,
    evaluate_lm,
    lm_batches,
    lm_loss,
    patchify,
    sample,
    top_k_filter,
    train_steps,
    unpatchify,
)
from tfx_course.layers import EncoderLayer
from tfx_course.training import TrainConfig

VARIANTS = {
    "classic": {},
    "rope": {"positional": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "swiglu": {"ffn": "swiglu", "d_ff": 24},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "sliding": {"attention": "sliding", "window": 3},
    "linear": {"attention": "linear"},
    "learned": {"positional": "learned"},
}


def _lm(**changes) -> DecoderOnlyLM:
    torch.manual_seed(0)
    config = LMConfig(vocab_size=20, d_model=16, n_heads=4, n_layers=2, d_ff=32, max_len=16)
    return DecoderOnlyLM(dataclasses.replace(config, **changes)).eval()


def _tokens(B=2, T=8, seed=0) -> torch.Tensor:
    return torch.randint(4, 20, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VARIANTS)
def test_the_lm_never_sees_the_future(name):
    model = _lm(**VARIANTS[name])
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1 - 4) % 16 + 4  # other tokens from position 5 on
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert a.shape == (2, 8, 20)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6), "positions before 5 changed"
    assert not torch.allclose(a[:, 5:], b[:, 5:]), "the changed positions did not change"


def test_the_sliding_window_forgets_what_lies_beyond_it():
    model = _lm(attention="sliding", window=2)  # 2 layers: position t sees t - 2 .. t
    tokens = _tokens(T=10)
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] + 1 - 4) % 16 + 4
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert not torch.allclose(a[:, 2], b[:, 2])  # within reach of two layers of window 2
    assert torch.allclose(a[:, 3:], b[:, 3:], atol=1e-6)  # out of reach


def test_a_classic_block_is_an_encoder_layer_under_a_causal_mask():
    model = _lm()
    layer = EncoderLayer(16, 4, 32, norm_first=True).eval()
    layer.load_state_dict(model.layers[0].state_dict())  # the same names and shapes
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.layers[0](x), layer(x, causal_mask(6)), atol=1e-5)


def test_the_output_layer_is_tied_to_the_embedding():
    model = _lm()
    assert model.lm_head.weight is model.embed.embedding.weight
    assert model.num_parameters() == sum(p.numel() for p in set(model.parameters()))


def test_lm_batches_wrap_texts_and_pad():
    tokenizer = CharTokenizer.from_texts(["abc", "ab"])
    batches = lm_batches(["abc", "a", "bca", "cab"], tokenizer, batch_size=2, max_len=4)
    rows = sorted(row.tolist() for b in batches for row in b)
    assert sum(b.shape[0] for b in batches) == 4 and all(b.shape[1] <= 4 for b in batches)
    assert rows[0][:3] == [BOS_ID, tokenizer.encode("a", False)[0], EOS_ID]
    assert all(r[0] == BOS_ID for r in rows) and [r for r in rows if len(r) == 4][0][-1] != EOS_ID


def test_lm_loss_ignores_padding_and_a_model_overfits_one_batch():
    model = _lm().train()
    tokens = torch.tensor([[BOS_ID, 5, 6, 7, 8, EOS_ID], [BOS_ID, 9, 10, EOS_ID, PAD_ID, PAD_ID]])
    padded = torch.cat([tokens, torch.full((2, 3), PAD_ID)], dim=1)
    assert torch.allclose(lm_loss(model.eval(), tokens), lm_loss(model, padded), atol=1e-6)
    config = TrainConfig(lr=1e-2, max_steps=60, warmup_steps=5, schedule="constant")
    history = train_steps(model, [tokens], lambda m, b: lm_loss(m, b), config)
    # Both rows start from <bos> alone, then go on with 5 or with 9: those two of the 8 targets
    # cannot be told apart, so the best possible loss is 2 ln 2 / 8, and everything else is learned.
    floor = 2 * math.log(2) / 8
    assert history.loss[0] > 2.5 and abs(evaluate_lm(model, [tokens]) - floor) < 0.03
    assert len(history.loss) == 60


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    kept = top_k_filter(logits, 2)
    assert torch.isinf(kept).tolist() == [[True, False, False, True]]
    assert torch.equal(top_k_filter(logits, None), logits)


def test_sampling_with_top_1_is_greedy_and_stops_at_eos():
    model = _lm()
    gen = torch.Generator().manual_seed(0)
    out = sample(model, 3, 10, temperature=0.7, top_k=1, generator=gen)
    assert out.shape[0] == 3 and (out == out[0]).all()  # top-1: every draw is the argmax
    greedy = torch.full((1, 1), BOS_ID)
    for _ in range(out.shape[1]):
        greedy = torch.cat([greedy, model(greedy)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out[0], greedy[0, 1:])
    for row in sample(model, 5, 12, 1.5, None, torch.Generator().manual_seed(1)).tolist():
        if EOS_ID in row:
            assert all(t == PAD_ID for t in row[row.index(EOS_ID) + 1 :])


def test_sampling_rejects_a_temperature_of_zero():
    with pytest.raises(ValueError, match="temperature must be positive"):
        sample(_lm(), 1, 5, temperature=0.0)


# --- the Vision Transformer ----------------------------------------------------------------


@pytest.mark.parametrize(("channels", "size", "patch"), [(1, 8, 2), (3, 8, 4), (2, 6, 3)])
def test_patching_round_trip(channels, size, patch):
    images = torch.randn(2, channels, size, size)
    patches = patchify(images, patch)
    assert patches.shape == (2, (size // patch) ** 2, channels * patch * patch)
    assert torch.equal(unpatchify(patches, patch, size, channels), images)


def test_patches_are_read_row_by_row():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(image, 2)
    assert patches[0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # top-left patch
    assert patches[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]  # top-right patch
    assert patches[0, 2].tolist() == [8.0, 9.0, 12.0, 13.0]


def test_the_vit_classifies_from_its_class_token():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(d_model=16, n_heads=4, d_ff=32)).eval()
    images = torch.randn(3, 1, 8, 8)
    logits = model(images)
    assert logits.shape == (3, 10)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(10.0))
    assert model(images).argmax(-1).tolist() == [9, 9, 9]


def test_the_vit_sees_the_order_of_its_patches():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(d_model=16, n_heads=4, d_ff=32)).eval()
    images = torch.randn(1, 1, 8, 8)
    moved = images.roll(4, dims=-1)  # the same patches, left and right halves swapped
    assert not torch.allclose(model(images), model(moved), atol=1e-4)
    with torch.no_grad():
        model.positional.pe.zero_()  # without positions the patches are a set
    assert torch.allclose(model(images), model(moved), atol=1e-5)


def test_vit_config_rejects_patches_that_do_not_tile():
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        ViTConfig(image_size=8, patch_size=3)


# --- the needle task --------------------------------------------------------------------------


def test_needle_sequences_hide_one_needle_before_the_query():
    task = NeedleTask(length=12, n_noise=5, n_needles=3)
    tokens, needles, distance = task.sample(200, seed=0)
    assert tokens.shape == (200, 12) and task.vocab_size == 4 + 5 + 3 + 1
    assert (tokens[:, -1] == task.query_id).all()
    is_needle = (tokens >= task.first_needle) & (tokens < task.query_id)
    assert (is_needle.sum(1) == 1).all()
    assert torch.equal(tokens[torch.arange(200), 11 - distance], needles)
    assert distance.min() == 1 and distance.max() == 11
    assert torch.equal(task.sample(200, seed=0)[0], tokens)
