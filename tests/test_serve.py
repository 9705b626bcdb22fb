"""Tests for tfx_course.serve: the batching queue, input checks, and the HTTP API over localhost."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tfx_course import serve
from tfx_course.decoding import translate
from tfx_course.pretrained import load_course_model

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock that moves only when a queue read waits (see ``SlowQueue``)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowQueue(queue.Queue):
    """A queue where each request arrives ``gap`` seconds after the previous one (fake time)."""

    def __init__(self, items, gap: float, clock: FakeClock):
        super().__init__()
        for item in items:
            self.put(item)
        self.gap, self.clock = gap, clock

    def get(self, block=True, timeout=None):
        if self.qsize() and timeout is not None and timeout < self.gap:
            self.clock.now += timeout
            raise queue.Empty
        if self.qsize():
            self.clock.now += self.gap
        return super().get(block=False)


def test_take_batch_stops_at_max_batch_or_at_the_deadline():
    clock = FakeClock()
    full = SlowQueue(range(10), gap=0.001, clock=clock)
    assert serve.take_batch(full, max_batch=4, max_wait=1.0, clock=clock) == [0, 1, 2, 3]
    clock = FakeClock()
    late = SlowQueue(range(10), gap=0.3, clock=clock)  # requests 0.3 s apart, wait 0.5 s
    assert serve.take_batch(late, max_batch=8, max_wait=0.5, clock=clock) == [0, 1]
    clock = FakeClock()
    alone = SlowQueue(range(3), gap=0.0, clock=clock)
    assert serve.take_batch(alone, max_batch=1, max_wait=1.0, clock=clock) == [0]


def test_batching_translator_groups_concurrent_requests_and_keeps_their_order():
    seen: list[list[str]] = []

    def translate_batch(texts: list[str]) -> list[str]:
        seen.append(list(texts))
        time.sleep(0.05)  # while one batch runs, the next requests queue up
        return [t.upper() for t in texts]

    batcher = serve.BatchingTranslator(translate_batch, max_batch=8, max_wait=0.05).start()
    try:
        futures = [batcher.submit(f"text {i}") for i in range(20)]
        results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.stop()
    assert results == [f"TEXT {i}" for i in range(20)]
    assert sum(batcher.batch_sizes) == 20 and max(batcher.batch_sizes) <= 8
    assert len(batcher.batch_sizes) < 20  # some requests shared a batch
    assert [t for batch in seen for t in batch] == [f"text {i}" for i in range(20)]


def test_a_failing_batch_reports_its_error_to_every_request_and_the_worker_goes_on():
    def translate_batch(texts: list[str]) -> list[str]:
        if "bad" in texts:
            raise RuntimeError("the model failed")
        return texts

    batcher = serve.BatchingTranslator(translate_batch, max_batch=4, max_wait=0.0).start()
    try:
        with pytest.raises(RuntimeError, match="the model failed"):
            batcher.submit("bad").result(timeout=10)
        assert batcher.submit("fine").result(timeout=10) == "fine"
    finally:
        batcher.stop()


def test_batching_translator_checks_its_arguments():
    with pytest.raises(ValueError, match="max_batch"):
        serve.BatchingTranslator(lambda t: t, max_batch=0)
    with pytest.raises(ValueError, match="max_wait"):
        serve.BatchingTranslator(lambda t: t, max_wait=-1)
    with pytest.raises(RuntimeError, match="start"):
        serve.BatchingTranslator(lambda t: t).submit("x")


@pytest.fixture(scope="module")
def course():
    return load_course_model()


def test_check_text_says_what_is_wrong(course):
    _, tokenizer = course
    assert serve.check_text("  Ein Hund.  ", tokenizer, 128) == "Ein Hund."
    for value, message in ((3, "must be a string, got int"), ("  ", "the text is empty"),
                           ("x" * 1001, "more than the 1,000 accepted"),
                           ("Hund " * 40, "the model reads at most 24")):  # fmt: skip
        with pytest.raises(serve.InputError, match=message):
            serve.check_text(value, tokenizer, 24 if "Hund" in str(value) else 128)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_api_translates_batches_and_refuses_bad_input(course, one_thread):
    model, tokenizer = course
    batcher = serve.BatchingTranslator(serve.translator_for(model, tokenizer), 8, 0.05)
    app = serve.create_app(batcher, tokenizer, model.config.max_len)
    texts = ["Ein Hund läuft.", "Zwei Männer spielen Fußball.", "Eine Frau liest ein Buch."] * 3
    expected = translate(model, texts, tokenizer, tokenizer, max_len=80)
    with serve.running_server(app) as url:
        bad = [(b"not json", 400, "not JSON"), (b'["a list"]', 422, '"text" field'),
               (b'{"text": 7}', 422, "must be a string"), (b'{"text": " "}', 422, "empty"),
               (json.dumps({"text": "Hund " * 200}).encode(), 422, "at most 128")]  # fmt: skip
        for body, status, message in bad:
            got_status, got = _post(f"{url}/translate", body)
            assert got_status == status and message in got["error"], (body, got)
        results: dict[int, tuple[int, dict]] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, _post(f"{url}/translate", json.dumps({"text": texts[i]}).encode())))
            for i in range(len(texts))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            health = json.loads(response.read())
        with urllib.request.urlopen(f"{url}/", timeout=10) as response:
            page = response.read().decode()
    assert [results[i] for i in range(len(texts))] == [(200, {"translation": e}) for e in expected]
    assert health == {"status": "ok", "requests": 9, "batches": len(batcher.batch_sizes)}
    assert len(batcher.batch_sizes) < 9  # concurrent requests were decoded together
    assert '<form id="form">' in page and "fetch(" in page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tfx_course_serve_answers_over_http_until_stopped(one_thread):
    port = _free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tfx_course.cli", "serve", "--port", str(port), "--threads", "1"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # loading the model and starting takes a few seconds
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.1)
        assert _post(f"{url}/translate", b'{"text": ""}')[0] == 422
        status, body = _post(f"{url}/translate", '{"text": "Ein Hund läuft."}'.encode())
        assert status == 200 and body["translation"][:1].isupper(), body
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert f"serving the translator on http://127.0.0.1:{port}" in out.decode()


def test_serve_command_reports_a_missing_checkpoint(tmp_path, capsys):
    from tfx_course.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err
