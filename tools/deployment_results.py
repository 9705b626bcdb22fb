"""Measure the course model deployed: int8 quantization, ONNX, ExecuTorch, serving, Hugging Face.

    TFX_COURSE_DATA=<folder holding multi30k/> python tools/deployment_results.py \\
        --out results/deployment_cpu.json

Writes what lesson 15 reads and plots (sizes, latencies, BLEU, parity, throughput), with the
machine it ran on. One torch thread everywhere (as in the lessons), so that the runtimes are
compared on equal terms. The BLEU of each quantization scheme is greedy sacreBLEU on all of
test2016; latencies are medians over single sentences (batch 1, greedy, up to 80 tokens).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import tfx_course as tfx
from tfx_course import export, hf, quantize, serve
from tfx_course.files import write_json

MAX_LEN = 80


def machine() -> dict:
    """Return what the numbers depend on: CPU, threads, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    names = ("torch", "torchao", "executorch", "onnxruntime", "onnxscript", "transformers")
    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "note": "a 2-core machine shared with other jobs: latencies vary from run to run",
        "versions": {n: version(n) for n in names} | {"python": sys.version.split()[0]},
    }


def median_seconds(fns: dict, items) -> dict[str, float]:
    """Return the median time of each ``fn(item)`` over ``items``, the functions taking turns.

    Each item runs every function once before the next item, so that other jobs on a shared
    machine slow them all alike; one warm-up call each first.
    """
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn(items[0])
    for item in items:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(item)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def source(tokenizer, text: str) -> torch.Tensor:
    return tfx.data.pad_sequences([tokenizer.encode(text)], tfx.data.PAD_ID)


def quantization(model, tokenizer, test, sentences) -> dict:
    models = {"float32": model} | {s: quantize.quantize_model(model, s) for s in quantize.SCHEMES}
    latency = median_seconds(
        {name: lambda text, m=m: tfx.decoding.greedy_decode(m, source(tokenizer, text), max_len=MAX_LEN)
         for name, m in models.items()},
        sentences,
    )  # fmt: skip
    rows = {}
    for scheme, m in models.items():
        bleu = tfx.evaluation.evaluate_translation(m, tokenizer, test, "greedy", max_len=MAX_LEN)
        rows[scheme] = {
            "bytes": quantize.saved_bytes(m),
            "bleu": round(bleu.bleu.score, 2),
            "signature": bleu.bleu.signature,
            "sentences": len(test),
            "seconds_per_sentence": round(latency[scheme], 5),
        }
        print(scheme, rows[scheme], flush=True)
    return rows


def recorded_step_inputs(eager, srcs, shape) -> list[tuple]:
    """Return the inputs of every decoder step while the eager programs translate ``srcs``."""
    recorded = []

    def step(*inputs):
        recorded.append(inputs)
        return eager[1](*inputs)

    for src in srcs:
        export.greedy_translate(eager[0], step, src, shape, MAX_LEN)
    return recorded


def runtimes(model, tokenizer, test, sentences, folder: Path) -> dict:
    c = model.config
    shape = (c.n_decoder_layers, c.n_heads, c.d_head)
    programs = export.export_translator(model)
    eager = (export.eager_runner(export.EncoderProgram(model)),
             export.eager_runner(export.DecoderStepProgram(model)))  # fmt: skip
    built = {"pytorch eager": (eager, 0), "torch.export": ((export.eager_runner(programs.encoder.module()), export.eager_runner(programs.step.module())), 0)}  # fmt: skip
    paths = [export.to_onnx(programs.encoder, folder / "encoder.onnx"),
             export.to_onnx(programs.step, folder / "step.onnx")]  # fmt: skip
    built["onnxruntime"] = (tuple(export.OnnxRunner(p) for p in paths), sum(p.stat().st_size for p in paths))  # fmt: skip
    for xnnpack in (False, True):
        name = "executorch (xnnpack)" if xnnpack else "executorch (portable)"
        paths = [export.to_executorch(programs.encoder, folder / f"encoder{xnnpack}.pte", xnnpack),
                 export.to_executorch(programs.step, folder / f"step{xnnpack}.pte", xnnpack)]  # fmt: skip
        built[name] = (tuple(export.ExecuTorchRunner(p) for p in paths), sum(p.stat().st_size for p in paths))  # fmt: skip
    srcs = [source(tokenizer, de) for de, _ in test]
    reference = [tfx.decoding.greedy_decode(model, s, max_len=MAX_LEN) for s in srcs]
    step_inputs = recorded_step_inputs(eager, srcs[:5], shape)
    runners = {name: runner for name, (runner, _) in built.items()}
    latency = median_seconds(
        {name: lambda text, r=r: export.greedy_translate(*r, source(tokenizer, text), shape, MAX_LEN)
         for name, r in runners.items()},
        sentences,
    )  # fmt: skip
    rows = {}
    for name, ((encoder, step), size) in built.items():
        decoded = (export.greedy_translate(encoder, step, s, shape, MAX_LEN) for s in srcs)
        same = sum(torch.equal(got, ref) for got, ref in zip(decoded, reference, strict=True))
        rows[name] = {
            "file_bytes": size,
            "encoder_max_difference": export.max_difference(eager[0], encoder, [(s,) for s in srcs[:20]]),
            "step_max_difference": export.max_difference(eager[1], step, step_inputs),
            "same_tokens_as_greedy_decode": same,
            "sentences": len(srcs),
            "seconds_per_sentence": round(latency[name], 5),
        }  # fmt: skip
        print(name, rows[name], flush=True)
    return rows


def serving(model, tokenizer, texts: list[str], clients: int = 16) -> dict:
    rows = {}
    for max_batch in (1, clients):
        batcher = serve.BatchingTranslator(serve.translator_for(model, tokenizer), max_batch, 0.01)
        app = serve.create_app(batcher, tokenizer, model.config.max_len)
        with serve.running_server(app) as url:
            import json
            import urllib.request

            def ask(text, url=url):
                body = json.dumps({"text": text}).encode()
                req = urllib.request.Request(f"{url}/translate", body, {"Content-Type": "application/json"})  # fmt: skip
                with urllib.request.urlopen(req) as response:
                    return json.loads(response.read())["translation"]

            ask(texts[0])
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(ask, texts))
            seconds = time.perf_counter() - start
        sizes = batcher.batch_sizes[1:]
        rows[f"max_batch={max_batch}"] = {
            "requests": len(texts), "clients": clients, "seconds": round(seconds, 2),
            "requests_per_second": round(len(texts) / seconds, 2),
            "batches": len(sizes), "mean_batch": round(sum(sizes) / len(sizes), 2),
        }  # fmt: skip
        print(max_batch, rows[f"max_batch={max_batch}"], flush=True)
    return rows


def hugging_face(model, tokenizer, test, folder: Path) -> dict:
    wrapped = hf.load(hf.save(hf.from_course_model(model), folder / "hf"))
    srcs = [source(tokenizer, de) for de, _ in test]
    same, worst = 0, 0.0
    for s in srcs:
        ref = tfx.decoding.greedy_decode(model, s, max_len=MAX_LEN)
        out = wrapped.generate(input_ids=s, max_new_tokens=MAX_LEN, do_sample=False, num_beams=1)
        same += torch.equal(out[:, 1:], ref)
        tgt = torch.cat([torch.full((1, 1), tfx.data.BOS_ID), ref], dim=1)
        with torch.no_grad():
            diff = (wrapped(input_ids=s, decoder_input_ids=tgt).logits - model(s, tgt)).abs().max()
        worst = max(worst, diff.item())
    files = {p.name: p.stat().st_size for p in (folder / "hf").iterdir()}
    return {"sentences": len(srcs), "same_tokens_as_greedy_decode": same,
            "logits_max_difference": worst, "files": files}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/deployment_cpu.json"))
    parser.add_argument("--latency-sentences", type=int, default=30)
    parser.add_argument("--parity-sentences", type=int, default=100)
    args = parser.parse_args(argv)
    tfx.setup_notebook()
    model, tokenizer = tfx.pretrained.load_course_model()
    test = tfx.data.load_multi30k("test2016")
    sentences = [de for de, _ in test[: args.latency_sentences]]
    result = {"machine": machine(), "decode_max_len": MAX_LEN}
    result["quantization"] = quantization(model, tokenizer, test, sentences)
    with tempfile.TemporaryDirectory() as tmp:
        result["runtimes"] = runtimes(model, tokenizer, test[: args.parity_sentences], sentences, Path(tmp))  # fmt: skip
        result["hugging_face"] = hugging_face(model, tokenizer, test[: args.parity_sentences], Path(tmp))  # fmt: skip
    result["serving"] = serving(model, tokenizer, [de for de, _ in test[:128]])
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
