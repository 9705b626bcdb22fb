"""Tests for tfx_course.interpret: head masking, attention rollout, gradient attributions."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients
from torch import Tensor

from tfx_course.attention import (
    MultiHeadAttention,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
from tfx_course.decoding import greedy_decode
from tfx_course.interpret import (
    all_heads,
    attention_module,
    attention_rollout,
    attention_table_html,
    head_mask,
    input_x_gradient,
    integrated_gradients,
    log_prob_from_embeddings,
    mask_heads,
    replaced_source_embeddings,
    source_attributions,
    source_embeddings,
)
from tfx_course.model import ModelConfig, Transformer

ROOT = Path(__file__).resolve().parents[1]
PAD = 0
CONFIG = ModelConfig(11, 13, d_model=16, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                     d_ff=32, dropout=0.0, max_len=16)  # fmt: skip


def make_model(config: ModelConfig = CONFIG, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config).eval()


@pytest.fixture
def src() -> Tensor:
    """Two source sentences; the second has three padded positions."""
    return torch.tensor([[1, 7, 3, 9, 5, 4, 2], [1, 6, 10, 5, 2, PAD, PAD]])


@pytest.fixture
def tgt() -> tuple[Tensor, Tensor]:
    """Decoder input and the tokens it should predict (one position ahead)."""
    tgt_in = torch.tensor([[1, 5, 12, 3, 9], [1, 8, 11, 7, PAD]])
    targets = torch.tensor([[5, 12, 3, 9, 2], [8, 11, 7, 2, PAD]])
    return tgt_in, targets


# --- finding and masking heads ----------------------------------------------------------


def test_attention_module_is_the_one_whose_weights_attention_maps_reports(src, tgt):
    model = make_model()
    maps = model.attention_maps(src, tgt[0])
    for kind, layers in maps.items():
        for layer, weights in enumerate(layers):
            module = attention_module(model, kind, layer)
            x = torch.randn(2, 5, 16)
            with head_mask(module, range(4)):  # every head off: only out_proj's bias is left
                out, _ = module(x, x, x)
            assert torch.allclose(out, module.out_proj.bias.expand(2, 5, 16))
            assert weights.shape[1] == module.n_heads
    assert attention_module(model, "cross", 1) is model.decoder.layers[1].cross_attn
    assert attention_module(model, "decoder_self", 0) is model.decoder.layers[0].self_attn
    assert attention_module(model, "encoder", 1) is model.encoder.layers[1].self_attn


def test_all_heads_lists_each_head_of_each_kind_once():
    heads = all_heads(make_model(dataclasses.replace(CONFIG, n_encoder_layers=3)))
    assert len(heads) == len(set(heads)) == (3 + 2 + 2) * 4
    assert heads[0] == ("encoder", 0, 0) and heads[-1] == ("cross", 1, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("attention", 0), "kind must be one of"),
        (("cross", 2), "layers 0..1"),
        (("encoder", -1), "layers 0..1"),
    ],  # fmt: skip
)
def test_attention_module_rejects_unknown_kinds_and_layers(args, message):
    with pytest.raises(ValueError, match=message):
        attention_module(make_model(), *args)


def _by_hand_without_head(attn: MultiHeadAttention, x: Tensor, mask: Tensor, head: int) -> Tensor:
    """The module's output minus head ``head``'s share of out_proj, computed from the weights."""
    q = split_heads(attn.q_proj(x), attn.n_heads)  # (B, H, T, D)
    k, v = split_heads(attn.k_proj(x), attn.n_heads), split_heads(attn.v_proj(x), attn.n_heads)
    heads, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, D)
    full = attn.out_proj(merge_heads(heads))  # (B, T, C)
    D = attn.d_head
    w_h = attn.out_proj.weight[:, head * D : (head + 1) * D]  # (C, D): head h's columns
    return full - heads[:, head] @ w_h.T  # (B, T, C)


@pytest.mark.parametrize("need_weights", [True, False], ids=["explicit", "fused"])
@pytest.mark.parametrize("head", [0, 2, 3])
def test_head_mask_equals_removing_the_heads_contribution_by_hand(need_weights, head):
    torch.manual_seed(1)
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    mask = padding_mask(torch.tensor([[True] * 6, [True] * 4 + [False] * 2]))
    with torch.no_grad():
        expected = _by_hand_without_head(attn, x, mask, head)
        _, weights_before = attn(x, x, x, mask)
        with head_mask(attn, head):
            out, weights = attn(x, x, x, mask, need_weights=need_weights)
        restored, _ = attn(x, x, x, mask)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(restored, out, atol=1e-3)  # the mask is gone after the block
    if need_weights:  # the head still looks; only its answer is dropped
        assert torch.equal(weights, weights_before)


def test_head_mask_is_removed_even_when_the_block_raises():
    attn = MultiHeadAttention(16, 4)
    with pytest.raises(RuntimeError, match="boom"), head_mask(attn, 1):
        raise RuntimeError("boom")
    assert not attn.out_proj._forward_pre_hooks


@pytest.mark.parametrize(
    ("heads", "error", "message"),
    [
        (4, ValueError, r"heads must be in 0..3"),
        ([0, -1], ValueError, r"\[-1\]"),
        (1.0, TypeError, "a head index or a list"),
    ],  # fmt: skip
)
def test_head_mask_rejects_heads_that_do_not_exist(heads, error, message):
    with pytest.raises(error, match=message), head_mask(MultiHeadAttention(16, 4), heads):
        pass


def test_head_mask_needs_an_attention_module():
    with pytest.raises(TypeError, match="attention_module"), head_mask(torch.nn.Linear(4, 4), 0):
        pass


def _zero_out_proj_columns(model: Transformer, heads) -> Transformer:
    """An independent way to switch heads off: zero their columns of out_proj's weight."""
    D = model.config.d_head
    with torch.no_grad():
        for kind, layer, head in heads:
            attention_module(model, kind, layer).out_proj.weight[:, head * D : (head + 1) * D] = 0
    return model


@pytest.mark.parametrize("fused", [False, True])
def test_mask_heads_equals_zeroing_their_output_weights_in_every_decoding_path(src, fused):
    model = make_model(dataclasses.replace(CONFIG, fused_attention=fused))
    heads = [("encoder", 0, 1), ("decoder_self", 1, 3), ("cross", 0, 0), ("cross", 0, 2)]
    reference = _zero_out_proj_columns(make_model(dataclasses.replace(CONFIG, fused_attention=fused)), heads)  # fmt: skip
    tgt_in = torch.tensor([[1, 5, 12, 3], [1, 8, 11, 7]])
    with torch.no_grad(), mask_heads(model, heads):
        logits = model(src, tgt_in)
        cached = greedy_decode(model, src, max_len=6, use_cache=True)
        uncached = greedy_decode(model, src, max_len=6, use_cache=False)
    with torch.no_grad():
        assert torch.allclose(logits, reference(src, tgt_in), atol=1e-5)
        assert torch.equal(cached, greedy_decode(reference, src, max_len=6))
        assert torch.equal(uncached, cached)
        assert not torch.allclose(model(src, tgt_in), logits, atol=1e-3)  # unmasked again


def test_mask_heads_rejects_a_malformed_head():
    with pytest.raises(ValueError, match=r"\(kind, layer, head\)"), mask_heads(make_model(), [("cross", 0)]):  # fmt: skip
        pass


# --- attention rollout -----------------------------------------------------------------


def _random_attention(B: int, H: int, S: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, S, S, generator=gen).softmax(dim=-1)


def test_rollout_rows_are_distributions_over_the_input_tokens():
    layers = [_random_attention(2, 4, 6, seed) for seed in range(3)]
    rollout = attention_rollout(layers)
    assert rollout.shape == (2, 6, 6)
    assert torch.allclose(rollout.sum(dim=-1), torch.ones(2, 6))
    assert (rollout >= 0).all()


def test_rollout_of_one_layer_mixes_its_mean_attention_with_the_identity():
    a = _random_attention(2, 4, 5, seed=0)
    mean = a.mean(dim=1)
    assert torch.allclose(attention_rollout([a], residual=0.0), mean)
    assert torch.allclose(attention_rollout([a]), 0.5 * torch.eye(5) + 0.5 * mean)
    assert torch.allclose(attention_rollout([mean], residual=0.3), 0.3 * torch.eye(5) + 0.7 * mean)


def test_rollout_multiplies_the_layers_first_layer_rightmost():
    a, b = (_random_attention(1, 2, 4, seed).mean(dim=1) for seed in (0, 1))
    half = 0.5 * torch.eye(4)
    expected = (half + 0.5 * b) @ (half + 0.5 * a)  # position i of layer 2 reads layer 1's mixes
    assert torch.allclose(attention_rollout([a, b]), expected)
    assert not torch.allclose(attention_rollout([b, a]), expected)


def test_rollout_of_attention_that_stays_home_is_the_identity():
    eye = torch.eye(5).expand(1, 3, 5, 5)
    assert torch.allclose(attention_rollout([eye, eye, eye]), torch.eye(5).expand(1, 5, 5))


def test_rollout_never_reaches_padding_from_a_real_token(src, tgt):
    maps = make_model().attention_maps(src, tgt[0])
    rollout = attention_rollout(maps["encoder"])
    assert torch.all(rollout[1, :5, 5:] == 0)  # sentence 2: real rows, padded columns
    assert rollout[0].min() > 0


@pytest.mark.parametrize(
    ("weights", "residual", "message"),
    [([], 0.5, "at least one layer"), ([torch.ones(2, 3, 4)], 0.5, r"\(B, H, S, S\)"),
     ([torch.ones(1, 3, 3)], 1.0, "residual must be in")],
)  # fmt: skip
def test_rollout_rejects_what_it_cannot_roll_out(weights, residual, message):
    with pytest.raises(ValueError, match=message):
        attention_rollout(weights, residual)


# --- gradient attributions ---------------------------------------------------------------


def test_attributions_of_a_quadratic_have_their_closed_form():
    # f(x) = sum(w x^2): the gradient 2 w x is linear along the path, so the midpoint rule is
    # exact and IG = w (x^2 - x'^2) ... with x' = 0, w x^2; input x gradient = 2 w x^2.
    w = torch.tensor([0.5, -2.0, 1.5])
    x = torch.tensor([[1.0, 2.0, -3.0], [0.5, -1.0, 2.0]])
    x0 = torch.tensor([[0.2, -0.4, 1.0], [0.0, 1.0, 0.5]])

    def f(z):
        return (w * z**2).sum(dim=-1)

    assert torch.allclose(integrated_gradients(f, x, steps=4), w * x**2, atol=1e-6)
    assert torch.allclose(integrated_gradients(f, x, x0, steps=3), w * (x**2 - x0**2), atol=1e-6)
    assert torch.allclose(input_x_gradient(f, x), 2 * w * x**2)


def test_integrated_gradients_adds_up_to_the_change_of_the_score(src, tgt):
    model = make_model()
    tgt_in, targets = tgt
    embeddings = source_embeddings(model, src)
    forward = log_prob_from_embeddings(model, src, tgt_in, targets, position=1)
    attributions = integrated_gradients(forward, embeddings, steps=256)
    with torch.no_grad():
        change = forward(embeddings) - forward(torch.zeros_like(embeddings))  # (B,)
    # ReLU's kinks make the midpoint rule converge like 1/steps: a few 1e-4 at 256 steps.
    assert torch.allclose(attributions.sum(dim=(1, 2)), change, rtol=0, atol=2e-3)
    assert change.abs().min() > 0.3  # the test is not passed by two small numbers


@pytest.mark.parametrize("position", [0, 3])
def test_integrated_gradients_equals_captums(src, tgt, position):
    model = make_model(seed=2)
    forward = log_prob_from_embeddings(model, src, *tgt, position=position)
    embeddings = source_embeddings(model, src)
    baselines = torch.randn_like(embeddings) * 0.1
    ours = integrated_gradients(forward, embeddings, baselines, steps=20)
    theirs = IntegratedGradients(forward).attribute(
        embeddings.clone().requires_grad_(), baselines, n_steps=20, method="riemann_middle"
    )
    assert ours.abs().max() > 1e-3
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


def test_input_x_gradient_equals_captums(src, tgt):
    model = make_model(seed=3)
    forward = log_prob_from_embeddings(model, src, *tgt, position=1)
    embeddings = source_embeddings(model, src)
    theirs = InputXGradient(forward).attribute(embeddings.clone().requires_grad_())
    ours = input_x_gradient(forward, embeddings)
    assert ours.abs().max() > 1e-3
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


def test_the_score_is_the_models_log_probability_of_the_target(src, tgt):
    model = make_model()
    tgt_in, targets = tgt
    embeddings = source_embeddings(model, src)
    with torch.no_grad():
        log_probs = model(src, tgt_in).log_softmax(dim=-1)  # (B, T, V)
        expected = log_probs.gather(2, targets[..., None]).squeeze(-1)  # (B, T)
        for t in range(tgt_in.shape[1]):
            forward = log_prob_from_embeddings(model, src, tgt_in, targets, t)
            assert torch.allclose(forward(embeddings), expected[:, t], atol=1e-5)
            three = forward(embeddings.repeat(3, 1, 1))  # three copies, step-major
            assert torch.allclose(three, expected[:, t].repeat(3), atol=1e-5)


def test_replaced_source_embeddings_feed_the_encoder_and_are_removed_afterwards(src, tgt):
    model = make_model()
    embeddings = source_embeddings(model, src)
    erased = embeddings.clone()
    erased[0, 2] = 0  # erase token 2 of sentence 0
    with torch.no_grad():
        logits = model(src, tgt[0])
        with replaced_source_embeddings(model, embeddings):
            same = model(src, tgt[0])
        with replaced_source_embeddings(model, erased):
            changed = model(src, tgt[0])
    assert torch.allclose(same, logits, atol=1e-6)
    assert not torch.allclose(changed[0], logits[0], atol=1e-3)
    assert torch.allclose(changed[1], logits[1], atol=1e-6)  # the other sentence is untouched
    assert not model.encoder.embed._forward_hooks


def test_the_score_needs_embeddings_shaped_like_the_source(src, tgt):
    model = make_model()
    forward = log_prob_from_embeddings(model, src, *tgt, position=0)
    with pytest.raises(ValueError, match=r"embeddings must be \(k \* 2, 7, 16\)"):
        forward(torch.zeros(3, 7, 16))
    with pytest.raises(ValueError, match="position must be in 0..4"):
        log_prob_from_embeddings(model, src, *tgt, position=5)


def test_the_model_is_scored_in_eval_mode_and_left_as_it_was(src, tgt):
    model = make_model(dataclasses.replace(CONFIG, dropout=0.5)).train()
    forward = log_prob_from_embeddings(model, src, *tgt, position=1)
    embeddings = source_embeddings(model, src)
    assert torch.equal(forward(embeddings), forward(embeddings))  # no dropout: repeatable
    assert model.training


@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient"])
def test_source_attributions_give_one_number_per_target_and_source_token(src, tgt, method):
    model = make_model()
    attributions = source_attributions(model, src, *tgt, method=method, steps=8)
    assert attributions.shape == (2, 5, 7)
    assert torch.all(attributions[1, :, 5:] == 0)  # padding's embedding is zero: nothing to move
    assert attributions[0].abs().min() > 0
    with pytest.raises(ValueError, match="method must be"):
        source_attributions(model, src, *tgt, method="saliency")


def test_attribution_functions_need_one_score_per_row():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        input_x_gradient(lambda z: z.sum(), x)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        integrated_gradients(lambda z: z, x, steps=4)
    with pytest.raises(ValueError, match="baselines"):
        integrated_gradients(lambda z: z.sum(-1), x, torch.zeros(3))


# --- the explorer's table ----------------------------------------------------------------


def test_attention_table_has_a_cell_per_weight_with_its_value_on_hover():
    weights = torch.tensor([[0.75, 0.25, 0.0], [0.1, 0.2, 0.7]])
    table = attention_table_html(weights, ["<bos>", "Hund", "<eos>"], ["a", "dog"], "head 0")
    assert table.count("<td ") == 6
    assert 'title="dog -&gt; &lt;eos&gt;: 0.700"' in table
    assert ">75</td>" in table and "<caption>head 0</caption>" in table
    assert "<bos>" not in table  # labels are escaped, not read as tags


def test_attention_table_rejects_labels_that_do_not_fit():
    with pytest.raises(ValueError, match="need 3 key labels and 2 query labels"):
        attention_table_html(torch.zeros(2, 3), ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match=r"one \(T, S\) matrix"):
        attention_table_html(torch.zeros(1, 2, 3), ["a"] * 3, ["b"] * 2)


# --- the committed head-ablation results ---------------------------------------------------


def test_the_head_ablation_results_hold_together():
    result = json.loads((ROOT / "results" / "head_ablation.json").read_text())
    rows = result["ranking"]["heads"]
    assert len(rows) == 24 and len(result["order_least_useful_first"]) == 24
    base = result["ranking"]["all heads"]
    assert all(math.isclose(r["bleu"] - base, r["change"], abs_tol=2e-3) for r in rows)
    changes = [r["change"] for r in rows]
    order = [next(r["change"] for r in rows if [r["kind"], r["layer"], r["head"]] == h)
             for h in result["order_least_useful_first"]]  # fmt: skip
    assert order == sorted(changes, reverse=True)
    least, most = result["pruning"]["least useful first"], result["pruning"]["most useful first"]
    assert least[0] == most[0] == base and least[-1] == most[-1]  # no heads vs all heads off
    assert math.isclose(least[1] - base, max(changes), abs_tol=2e-3)
    runs = result["slice"]["runs"]
    assert runs["half off"]["heads"] == result["order_least_useful_first"][:12]
    assert str(ROOT) not in json.dumps(result)  # no path of the machine that ran it


def test_the_head_ablation_script_runs_end_to_end(load_script, data_root, tmp_path):
    script = load_script("tools/head_ablation.py")
    out = tmp_path / "ablation.json"
    threads = torch.get_num_threads()
    try:
        assert script.main(["--out", str(out), "--ranking", "6", "--held-out", "3", "--slice", "2"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["ranking"]["sentences"] == [0, 6] and result["held_out"]["sentences"] == [6, 9]
    assert len(result["pruning"]["least useful first"]) == 25
    assert len(result["slice"]["runs"]["all heads"]["outputs"]) == 2
