"""Tests for tfx_course.viz: what each picture shows, its labels, and errors on bad input."""

import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace  # noqa: E402

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


def test_plot_position_changes_draws_grouped_bars_and_shades_the_edit():
    changes = {"causal mask": torch.tensor([0.0, 0.0, 0.5, 0.7]), "no mask": [0.3, 0.2, 0.5, 0.9]}
    ax = viz.plot_position_changes(changes, changed=[3, 0, 2], x_labels=list("abcd"), title="leak")
    assert (ax.get_title(), ax.get_xlabel()) == ("leak", "position t")
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert [c.get_label() for c in ax.containers] == ["causal mask", "no mask"]
    bars = [bar for container in ax.containers for bar in container]
    np.testing.assert_allclose([b.get_height() for b in bars], [0, 0, 0.5, 0.7, 0.3, 0.2, 0.5, 0.9])
    centres = np.array([b.get_x() + b.get_width() / 2 for b in bars])
    np.testing.assert_allclose(centres[:4], np.arange(4) - 0.2)  # first setting left of centre
    np.testing.assert_allclose(centres[4:], np.arange(4) + 0.2)
    spans = [p for p in ax.patches if p not in bars]
    assert sorted((s.get_x(), s.get_width()) for s in spans) == [(-0.5, 1.0), (1.5, 2.0)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["causal mask", "no mask", "edited input"]
    assert ax.get_yscale() == "linear"
    assert viz.plot_position_changes(changes, logy=True).get_yscale() == "log"


def test_plot_position_changes_rejects_bad_input():
    with pytest.raises(ValueError, match="changes is empty"):
        viz.plot_position_changes({})
    with pytest.raises(ValueError, match=r"same length.*\(3,\).*\(2,\)"):
        viz.plot_position_changes({"a": [1, 2, 3], "b": [1, 2]})
    with pytest.raises(ValueError, match=r"one value per position.*amax\(-1\)"):
        viz.plot_position_changes({"a": torch.zeros(1, 3, 4)})
    with pytest.raises(ValueError, match=r"changed positions \[3\] are outside 0..2"):
        viz.plot_position_changes({"a": [1, 2, 3]}, changed=[3])
    with pytest.raises(ValueError, match="x_labels has 2 entries for 3 positions"):
        viz.plot_position_changes({"a": [1, 2, 3]}, x_labels=["x", "y"])


def _history(n_steps: int = 10):
    from tfx_course.training import History

    history = History()
    for step in range(1, n_steps + 1):
        history.record(step, loss=10.0 / step, lr=1e-3 * step / n_steps, grad_norm=1.0)
    history.record_validation(5, 2.5)
    history.record_validation(10, 1.5)
    return history


def test_plot_history_draws_loss_validation_and_learning_rate():
    history = _history()
    fig = viz.plot_history(history, title="run")
    ax_loss, ax_lr = fig.axes
    assert fig.get_suptitle() == "run"
    assert (ax_loss.get_xlabel(), ax_lr.get_xlabel()) == ("step", "step")
    assert ax_loss.get_yscale() == "log" and ax_lr.get_ylabel() == "lr"
    train, val = ax_loss.lines
    np.testing.assert_allclose(train.get_xdata(), history.step)
    np.testing.assert_allclose(train.get_ydata(), history.loss)
    np.testing.assert_allclose(val.get_xdata(), [5, 10])
    np.testing.assert_allclose(val.get_ydata(), [2.5, 1.5])
    np.testing.assert_allclose(ax_lr.lines[0].get_ydata(), history.lr)
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["train", "validation"]


def test_plot_history_smooths_with_a_moving_average():
    history = _history()
    fig = viz.plot_history(history, smooth=4, logy=False)
    raw, average, _ = fig.axes[0].lines
    np.testing.assert_allclose(raw.get_ydata(), history.loss)
    expected = [sum(history.loss[i - 3 : i + 1]) / 4 for i in range(3, 10)]
    np.testing.assert_allclose(average.get_ydata(), expected)
    np.testing.assert_allclose(average.get_xdata(), history.step[3:])
    assert average.get_label() == "train (mean of 4)"
    assert fig.axes[0].get_yscale() == "linear"


def test_plot_history_rejects_bad_input():
    from tfx_course.training import History

    with pytest.raises(ValueError, match="history is empty"):
        viz.plot_history(History())
    with pytest.raises(TypeError, match="history has no 'step'"):
        viz.plot_history({"loss": [1.0]})
    with pytest.raises(ValueError, match="smooth must be a positive"):
        viz.plot_history(_history(), smooth=0)
    broken = _history()
    broken.lr.pop()
    with pytest.raises(ValueError, match="lengths 10, 10 and 9"):
        viz.plot_history(broken)


def test_plot_positional_encoding_shows_the_table_on_a_symmetric_scale():
    gen = torch.Generator().manual_seed(0)
    pe = torch.rand(1, 12, 8, generator=gen) * 2 - 1  # (1, max_len, C), values in [-1, 1)
    ax = viz.plot_positional_encoding(pe, title="table")
    assert ax.get_title() == "table"
    assert ax.get_xlabel() == "feature (column of the table)"
    assert ax.get_ylabel() == "position"
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (12, 8)  # rows are positions, columns are features
    np.testing.assert_allclose(image, pe[0].numpy())
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    wide = viz.plot_positional_encoding(3 * np.eye(4), colorbar=False)
    assert wide.images[0].get_clim() == (-3.0, 3.0)  # values beyond [-1, 1] stay visible


def test_plot_positional_encoding_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(max_len, C\).*\(2, 3, 4\).*sinusoidal_encoding"):
        viz.plot_positional_encoding(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="torch.Tensor or a numpy array"):
        viz.plot_positional_encoding([[0.0, 1.0]])


def test_plot_padding_splits_each_bar_into_real_tokens_and_padding():
    from tfx_course.data.bucketing import PaddingStats

    stats = {"random": PaddingStats(3, 40, 100), "bucketed": PaddingStats(2, 45, 50)}
    ax = viz.plot_padding(stats, title="padding")
    assert (ax.get_title(), ax.get_xlabel()) == ("padding", "token slots in the padded batches")
    real, padding = ax.containers
    assert (real.get_label(), padding.get_label()) == ("real tokens", "padding")
    np.testing.assert_allclose([b.get_width() for b in real], [40, 45])
    np.testing.assert_allclose([b.get_width() for b in padding], [60, 5])
    np.testing.assert_allclose([b.get_x() for b in padding], [40, 45])  # padding follows real
    assert [t.get_text() for t in ax.get_yticklabels()] == ["random", "bucketed"]
    assert ax.yaxis_inverted()  # the first entry is drawn on top
    assert [t.get_text() for t in ax.texts] == [" 40% real", " 90% real"]
    assert ax.get_xlim()[1] >= 100  # the longest bar fits
    assert ax.xaxis.get_major_formatter()(2_000_000, 0) == "2 M"  # no "1e6" offset label
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["real tokens", "padding"]


def test_plot_padding_accepts_any_counts_and_rejects_bad_input():
    from types import SimpleNamespace

    _, ax = plt.subplots()
    empty = SimpleNamespace(real_tokens=0, padded_tokens=0)
    assert viz.plot_padding({"none": empty}, ax=ax) is ax
    assert [t.get_text() for t in ax.texts] == [" 100% real"]
    with pytest.raises(ValueError, match="stats is empty"):
        viz.plot_padding({})
    with pytest.raises(TypeError, match=r"stats\['a'\] has no real_tokens.*padding_stats"):
        viz.plot_padding({"a": (3, 4)})
    with pytest.raises(ValueError, match=r"stats\['b'\] counts 5 real tokens in 4 padded slots"):
        viz.plot_padding({"b": SimpleNamespace(real_tokens=5, padded_tokens=4)})


def test_a_log_axis_spanning_less_than_a_decade_gets_plain_labels():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [5.2, 6.0, 7.9])
    ax.set_yscale("log")
    viz.label_log_axis(ax)
    fig.canvas.draw()
    minor = [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    assert minor and all("times" not in t and "^" not in t for t in minor), minor
    assert {"6", "7"} <= set(minor)
    plt.close(fig)


def test_a_log_axis_over_many_decades_keeps_its_minor_ticks_unlabelled():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1e-4, 1e-1, 3.0])
    ax.set_yscale("log")
    viz.label_log_axis(ax)
    fig.canvas.draw()
    assert not [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    assert "0.01" in [t.get_text() for t in ax.get_yticklabels()]
    plt.close(fig)


def test_a_single_validation_point_says_so_in_the_legend():
    history = SimpleNamespace(
        step=[1, 2, 3], loss=[3.0, 2.0, 1.5], lr=[0.1, 0.1, 0.1], val_step=[3], val_loss=[1.6]
    )
    fig = viz.plot_history(history)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["train", "validation (step 3 only)"]
    plt.close(fig)
