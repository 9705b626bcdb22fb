"""Tests for tfx_course.validation: the argument checks and the shape format the library shares."""

from __future__ import annotations

import pytest
import torch

from tfx_course.validation import check_positive_int, check_probability, is_int, shape_str


def test_shape_str_formats_tensors_and_sizes_alike():
    assert shape_str(torch.zeros(2, 3, 4)) == "(2, 3, 4)" == shape_str([2, 3, 4])
    assert shape_str(torch.zeros(())) == "()"


def test_positive_int_names_the_first_bad_value():
    check_positive_int(d_model=16, n_heads=4)
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=rf"n_heads must be a positive integer, got {bad!r}"):
            check_positive_int(d_model=16, n_heads=bad)
    assert is_int(3) and not is_int(True) and not is_int(3.0)


def test_probability_accepts_0_and_rejects_1():
    check_probability(0)
    check_probability(0.99, "dropout_p")
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got"):
            check_probability(bad, "dropout_p")
