"""Serving the translator over HTTP: a batching queue, a small JSON API and a one-page demo.

Requests that arrive close together are translated as one batch: a worker thread takes the
first waiting request, then keeps taking requests until it holds ``max_batch`` of them or
``max_wait`` seconds have passed since the first (``take_batch``), and decodes them together.
One batch of 16 sentences costs far less than 16 batches of one, because every decoding step
is a few matrix products whose cost barely grows with the batch on a CPU; the price is at most
``max_wait`` of extra latency for the first request of a batch.

The API (``create_app``, built on Starlette and served by uvicorn):

- ``POST /translate`` with ``{"text": "Ein Hund läuft."}`` -> ``{"translation": "A dog is running."}``;
  bad input gets a 4xx status and ``{"error": "what was wrong and how to fix it"}``;
- ``GET /`` the demo page; ``GET /health`` the server's counts of requests and batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tfx_course.data.tokenizers import Tokenizer
from tfx_course.decoding import translate
from tfx_course.validation import check_positive_int

__all__ = [
    "MAX_CHARS",
    "InputError",
    "check_text",
    "take_batch",
    "BatchingTranslator",
    "translator_for",
    "create_app",
    "running_server",
    "DEMO_PAGE",
]

MAX_CHARS = 1000  # longest request text accepted, in characters


class InputError(ValueError):
    """A request the translator cannot take; the message says what was wrong and how to fix it."""


def check_text(value: Any, tokenizer: Tokenizer, max_tokens: int) -> str:
    """Return ``value`` stripped if it is a sentence the model can translate, else ``InputError``.

    ``max_tokens`` is the most subword tokens the encoder reads, ``<bos>`` and ``<eos>``
    included (the model's ``max_len``).
    """
    if not isinstance(value, str):
        raise InputError(f'"text" must be a string, got {type(value).__name__}: send {{"text": "..."}}')  # fmt: skip
    text = value.strip()
    if not text:
        raise InputError("the text is empty: give a German sentence to translate")
    if len(text) > MAX_CHARS:
        raise InputError(
            f"the text has {len(text):,} characters, more than the {MAX_CHARS:,} accepted: "
            "send one sentence at a time"
        )
    n = len(tokenizer.encode(text, add_special=True))
    if n > max_tokens:
        raise InputError(
            f"the text is {n} subword tokens long and the model reads at most {max_tokens}: "
            "split it into shorter sentences"
        )
    return text


def take_batch(
    requests: queue.Queue,
    max_batch: int,
    max_wait: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[Any]:
    """Wait for one request, then take more until ``max_batch`` or ``max_wait`` s after the first.

    Returns the requests in arrival order; never an empty list. ``clock`` tells the time
    (seconds); the deadline is counted from the moment the first request was taken.
    """
    batch = [requests.get()]  # block: a batch starts with a request
    deadline = clock() + max_wait
    while len(batch) < max_batch:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        try:
            batch.append(requests.get(timeout=remaining))
        except queue.Empty:
            break
    return batch


@dataclass
class _Request:
    text: str
    future: Future = field(default_factory=Future)


_STOP = object()  # put on the queue to end the worker


class BatchingTranslator:
    """Translate texts submitted from many threads in batches, on one worker thread.

    ``translate_batch`` turns a list of texts into their translations; ``submit`` returns a
    ``concurrent.futures.Future`` of one translation. ``batch_sizes`` records every batch run.
    """

    def __init__(
        self,
        translate_batch: Callable[[list[str]], list[str]],
        max_batch: int = 16,
        max_wait: float = 0.01,
    ):
        check_positive_int(max_batch=max_batch)
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.translate_batch, self.max_batch, self.max_wait = translate_batch, max_batch, max_wait
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> BatchingTranslator:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="translator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the waiting requests, then end the worker thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def submit(self, text: str) -> Future:
        """Queue ``text``; the returned future gets its translation (or the error)."""
        if self._thread is None:
            raise RuntimeError("call start() before submitting requests")
        request = _Request(text)
        self._queue.put(request)
        return request.future

    def _work(self) -> None:
        while True:
            batch = take_batch(self._queue, self.max_batch, self.max_wait)
            requests = [r for r in batch if r is not _STOP]
            if requests:
                self._run(requests)
            if len(requests) < len(batch):
                return

    def _run(self, requests: list[_Request]) -> None:
        self.batch_sizes.append(len(requests))
        try:
            outputs = self.translate_batch([r.text for r in requests])
        except Exception as err:  # every request of the batch learns what went wrong
            for r in requests:
                r.future.set_exception(err)
            return
        for r, out in zip(requests, outputs, strict=True):
            r.future.set_result(out)


def translator_for(
    model: nn.Module, tokenizer: Tokenizer, max_len: int = 80, threads: int | None = None
) -> Callable[[list[str]], list[str]]:
    """Return a function that translates a list of texts with greedy decoding, as one batch."""
    max_len = min(max_len, model.config.max_len)

    def translate_batch(texts: list[str]) -> list[str]:
        if threads is not None:
            torch.set_num_threads(threads)
        return translate(model, texts, tokenizer, tokenizer, max_len=max_len, batch_size=len(texts))  # fmt: skip

    return translate_batch


def _error(status: int, message: str):  # noqa: ANN202 - a Starlette response
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def create_app(translator: BatchingTranslator, tokenizer: Tokenizer, max_tokens: int):  # noqa: ANN201 - a Starlette application
    """Return the Starlette app: ``POST /translate``, the demo page at ``/``, ``GET /health``.

    The app starts ``translator``'s worker when it starts and stops it when it stops.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    async def translate_endpoint(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'the body is not JSON: send {"text": "a German sentence"}')
        if not isinstance(body, dict) or "text" not in body:
            return _error(422, 'send a JSON object with a "text" field: {"text": "..."}')
        try:
            text = check_text(body["text"], tokenizer, max_tokens)
        except InputError as err:
            return _error(422, str(err))
        translation = await asyncio.wrap_future(translator.submit(text))
        return JSONResponse({"translation": translation})

    async def health(request: Request) -> JSONResponse:
        sizes = translator.batch_sizes
        return JSONResponse({"status": "ok", "requests": sum(sizes), "batches": len(sizes)})

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(DEMO_PAGE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        translator.start()
        yield
        translator.stop()

    routes = [
        Route("/", page),
        Route("/translate", translate_endpoint, methods=["POST"]),
        Route("/health", health),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread; yield its base URL, then stop it.

    ``port=0`` takes a free port. For notebooks, tests and measurements; ``tfx-course serve``
    runs uvicorn in the foreground.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join()


DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tfx_course translator</title>
<style>
  body { font-family: sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; font-size: 1rem; }
  #translation { font-size: 1.2rem; min-height: 1.5rem; margin-top: 1rem; }
  #error { color: #b00020; margin-top: 1rem; }
</style>
</head>
<body>
<h1>German → English</h1>
<p>The course's Transformer (lesson 15), served with request batching.</p>
<form id="form">
  <label for="text">German text</label>
  <textarea id="text" rows="3">Ein Hund läuft über eine Wiese.</textarea>
  <button id="go" type="submit">Translate</button>
</form>
<div id="translation" aria-live="polite"></div>
<div id="error" role="alert"></div>
<script>
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = document.getElementById("translation");
  const error = document.getElementById("error");
  out.textContent = ""; error.textContent = "";
  const response = await fetch("translate", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text: document.getElementById("text").value}),
  });
  const data = await response.json();
  if (response.ok) { out.textContent = data.translation; }
  else { error.textContent = data.error; }
});
</script>
</body>
</html>
"""
