"""Which torch build `make setup` installs (tools/install_torch.py), decided without a network."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time

import pytest
import torch


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/install_torch.py")


def _never(what: str):
    def ask() -> bool:
        raise AssertionError(f"{what} should not be asked here")

    return ask


@pytest.mark.parametrize(
    ("system", "gpu", "reachable", "build"),
    [
        ("Linux", False, True, "cpu"),
        ("Linux", False, False, "default"),
        ("Linux", True, True, "default"),
    ],
    ids=["linux-no-gpu", "linux-no-gpu-index-unreachable", "linux-nvidia-gpu"],
)
def test_linux_takes_the_cpu_build_only_without_a_gpu_and_with_the_index(
    tool, system, gpu, reachable, build
):
    probe = (lambda: reachable) if not gpu else _never("the index")
    choice = tool.choose(system, lambda: gpu, probe)
    assert choice.build == build
    if build == "cpu":
        assert choice.pip_options == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    else:
        assert choice.pip_options == []
    if not reachable:
        assert "unreachable" in choice.reason


@pytest.mark.parametrize("system", ["Darwin", "Windows"])
def test_macos_and_windows_take_the_default_index_without_probing(tool, system):
    choice = tool.choose(system, _never("the GPU"), _never("the index"))
    assert choice.build == "default" and choice.pip_options == []
    assert ("macOS" if system == "Darwin" else "Windows") in choice.reason


@pytest.mark.parametrize("build", ["cpu", "default"])
def test_a_forced_build_is_taken_as_asked(tool, build):
    choice = tool.choose("Linux", _never("the GPU"), _never("the index"), build=build)
    assert choice.build == build and "as asked" in choice.reason


def test_an_nvidia_gpu_is_seen_by_nvidia_smi_or_the_driver_folder(tool, tmp_path):
    absent = tmp_path / "no-driver"
    assert not tool.has_nvidia_gpu(lambda name: None, absent)
    assert tool.has_nvidia_gpu(lambda name: "/usr/bin/nvidia-smi", absent)
    driver = tmp_path / "nvidia"
    driver.mkdir()
    assert tool.has_nvidia_gpu(lambda name: None, driver)


class _TorchPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the name http.server calls
        found = self.path == "/cpu/torch/"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(b"<a>torch-2.13.0+cpu</a>" if found else b"")

    def log_message(self, *args):
        pass


def test_the_index_probe_reads_a_local_index_and_gives_up_quickly(tool):
    server = http.server.HTTPServer(("127.0.0.1", 0), _TorchPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert tool.index_reachable(f"{base}/cpu", timeout=5)
        assert not tool.index_reachable(f"{base}/missing", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    # A port nobody listens on, and one that accepts but never answers (a silent firewall).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not tool.index_reachable(f"http://127.0.0.1:{port}/cpu", timeout=2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.perf_counter()
        assert not tool.index_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        assert time.perf_counter() - start < 5


def test_the_pip_command_pins_torch_within_the_lock(tool):
    pin = tool.torch_pin()
    assert pin == "torch==" + torch.__version__.split("+")[0]
    cpu = tool.pip_command("py", pin, tool.Choice("cpu", ""), ["--no-index"])
    assert cpu[:4] == ["py", "-m", "pip", "install"]
    assert pin in cpu and cpu[cpu.index("-c") + 1] == str(tool.LOCK)
    assert cpu[cpu.index("--extra-index-url") + 1] == tool.CPU_INDEX and cpu[-1] == "--no-index"
    assert "--extra-index-url" not in tool.pip_command("py", pin, tool.Choice("default", ""))


def test_the_installed_build_is_named(tool):
    cuda = torch.version.cuda
    kind = f"CUDA {cuda} build" if cuda else "CPU build"
    if not cuda and not torch.__version__.endswith("+cpu"):
        kind = "no CUDA libraries"
    assert tool.installed_build(sys.executable) == f"torch {torch.__version__} ({kind})"


def test_dry_run_says_what_it_would_install(tool, monkeypatch, capsys):
    monkeypatch.setattr(tool.platform, "system", lambda: "Linux")
    monkeypatch.setattr(tool, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(tool, "index_reachable", lambda: False)
    assert tool.main(["--dry-run"]) == 0
    assert "unreachable: the default index" in capsys.readouterr().out
    monkeypatch.setattr(tool, "index_reachable", lambda: True)
    assert tool.main(["--dry-run"]) == 0
    assert "the CPU build from https://download.pytorch.org/whl/cpu" in capsys.readouterr().out
    monkeypatch.setattr(tool, "index_reachable", _never("the index"))
    assert tool.main(["--dry-run", "--no-index", "--find-links", "wheels"]) == 0
    assert "offline" in capsys.readouterr().out
