"""Tests for the device picker: automatic order, the TFX_COURSE_DEVICE override, clear errors."""

import pytest
import torch

from tfx_course import device as device_module
from tfx_course.device import DEVICE_ENV, pick_device


@pytest.fixture
def machine(monkeypatch):
    """Pretend this CPU machine has the accelerators a test names."""

    def have(cuda: bool = False, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(device_module, "_mps_available", lambda: mps)

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    return have


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_automatic_choice_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert pick_device().type == expected


@pytest.mark.parametrize("cuda, mps", [(True, True), (True, False), (False, True)])
def test_the_environment_variable_keeps_a_gpu_machine_on_the_cpu(machine, monkeypatch, cuda, mps):
    machine(cuda=cuda, mps=mps)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert pick_device() == torch.device("cpu")


def test_an_explicit_argument_wins_over_the_environment_variable(machine, monkeypatch):
    machine(cuda=False)
    monkeypatch.setenv(DEVICE_ENV, "mps")
    assert pick_device("cpu") == torch.device("cpu")


def test_an_empty_variable_means_automatic(machine, monkeypatch):
    machine(mps=True)
    monkeypatch.setenv(DEVICE_ENV, " ")
    assert pick_device().type == "mps"


@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_a_device_this_machine_lacks_is_refused_with_the_fix(machine, monkeypatch, name):
    machine(cuda=False, mps=False)
    monkeypatch.setenv(DEVICE_ENV, name)
    with pytest.raises(RuntimeError, match=f"'{name}' \\(set by {DEVICE_ENV}\\) is not available"):
        pick_device()
    with pytest.raises(RuntimeError, match="asked for"):
        pick_device(name)


def test_a_misspelt_device_names_the_variable(machine, monkeypatch):
    machine()
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ValueError, match=f"'gpu' \\(set by {DEVICE_ENV}\\) is not a device name"):
        pick_device()
