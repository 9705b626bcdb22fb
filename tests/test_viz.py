"""Tests for tfx_course.viz: what each picture shows, its labels, and errors on bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tfx_course import viz  # noqa: E402
from tfx_course.attention import causal_mask, padding_mask  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _weights(*shape: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=gen).softmax(dim=-1)


def test_plot_mask_shows_the_mask_with_title_and_labels():
    mask = causal_mask(5) & padding_mask(torch.tensor([[True, True, True, False, False]]))[0, 0]
    ax = viz.plot_mask(mask, title="causal & padding")
    assert ax.get_title() == "causal & padding"
    assert ax.get_xlabel() == "key position s"
    assert ax.get_ylabel() == "query position t"
    image = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(image, mask.numpy().astype(np.float32))
    assert image[1, 0] == 1.0 and image[0, 1] == 0.0  # True is drawn as 1: allowed
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "True: may attend",
        "False: blocked",
    ]


def test_plot_mask_draws_on_the_given_axes_and_drops_leading_singleton_axes():
    _, ax = plt.subplots()
    mask = causal_mask(4)[None, None]  # (1, 1, T, S)
    assert viz.plot_mask(mask, ax=ax, x_labels=list("abcd")) is ax
    np.testing.assert_array_equal(ax.images[0].get_array(), causal_mask(4).numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")


def test_plot_mask_rejects_bad_input():
    with pytest.raises(TypeError, match="boolean"):
        viz.plot_mask(torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(T, S\).*\(2, 1, 3, 3\).*mask\[0, 0\]"):
        viz.plot_mask(torch.ones(2, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor or a numpy array"):
        viz.plot_mask([[True, False]])
    with pytest.raises(ValueError, match="x_labels has 2 entries.*3 columns"):
        viz.plot_mask(causal_mask(3), x_labels=["a", "b"])


def test_plot_attention_shows_the_weights_with_labels_and_annotations():
    weights = _weights(3, 4)
    ax = viz.plot_attention(
        weights, x_labels=list("wxyz"), y_labels=list("abc"), title="demo", annotate=True
    )
    assert ax.get_title() == "demo"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key", "query")
    np.testing.assert_allclose(ax.images[0].get_array(), weights.numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == list("abc")
    assert [t.get_text() for t in ax.texts] == [f"{w:.2f}" for w in weights.flatten().tolist()]
    assert ax.images[0].get_clim() == (0.0, 1.0)


def test_plot_attention_accepts_numpy_and_grad_tensors():
    weights = _weights(1, 1, 2, 2).requires_grad_()
    ax = viz.plot_attention(weights, colorbar=False, vmax=None)
    np.testing.assert_allclose(ax.images[0].get_array(), weights.detach()[0, 0].numpy())
    assert ax.get_xlabel() == "key position s"
    ax = viz.plot_attention(np.eye(3), colorbar=False)
    np.testing.assert_array_equal(ax.images[0].get_array(), np.eye(3))


def test_plot_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(T, S\).*\(4, 3, 3\).*plot_heads"):
        viz.plot_attention(_weights(4, 3, 3))
    with pytest.raises(ValueError, match="y_labels has 1 entries.*2 rows"):
        viz.plot_attention(_weights(2, 2), y_labels=["a"])


def test_plot_heads_draws_one_panel_per_head():
    weights = _weights(1, 3, 2, 5)  # (1, H, T, S)
    fig = viz.plot_heads(weights, x_labels=list("abcde"), title="heads", head_names=["a", "b", "c"])
    head_axes = [ax for ax in fig.axes if ax.images]
    assert len(head_axes) == 3
    assert fig.get_suptitle() == "heads"
    for h, ax in enumerate(head_axes):
        assert ax.get_title() == "abc"[h]
        assert ax.get_xlabel() == "key"
        np.testing.assert_allclose(ax.images[0].get_array(), weights[0, h].numpy())


def test_plot_heads_wraps_rows_and_rejects_bad_input():
    fig = viz.plot_heads(_weights(5, 2, 2), ncols=2)
    assert len([ax for ax in fig.axes if ax.images]) == 5
    assert [ax.get_title() for ax in fig.axes if ax.images] == [f"head {h}" for h in range(5)]
    with pytest.raises(ValueError, match=r"\(H, T, S\).*\(2, 3, 2, 2\).*weights\[0\]"):
        viz.plot_heads(_weights(2, 3, 2, 2))
    with pytest.raises(ValueError, match="head_names has 1 entries for 3 heads"):
        viz.plot_heads(_weights(3, 2, 2), head_names=["only one"])


def test_plot_curves_draws_each_curve_with_a_legend():
    x = [4, 16, 64]
    curves = {"scaled": torch.tensor([0.3, 0.3, 0.3]), "unscaled": np.array([0.5, 0.8, 0.95])}
    ax = viz.plot_curves(x, curves, title="t", xlabel="d_k", ylabel="max weight", logx=True)
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("t", "d_k", "max weight")
    assert [line.get_label() for line in ax.lines] == ["scaled", "unscaled"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), curves["unscaled"])
    np.testing.assert_allclose(ax.lines[0].get_xdata(), x)
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scaled", "unscaled"]


def test_plot_curves_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="curve 'a' has shape \\(2,\\) but x has shape \\(3,\\)"):
        viz.plot_curves([1, 2, 3], {"a": [1, 2]})
    with pytest.raises(ValueError, match="curves is empty"):
        viz.plot_curves([1, 2, 3], {})
