"""The course's trained German-to-English model: export it, load it, score it on test2016.

A trained run (``tfx_course.translation.train_translation``) leaves a full training checkpoint
(weights, optimizer, schedule). The course ships only what translation needs, as package data
in ``tfx_course/course_checkpoint/`` (so an installed package has it too):

- ``model.pt``: the weights in half precision and the ``ModelConfig``, readable with
  ``torch.load(weights_only=True)`` (a checkpoint cannot run code when loaded);
- ``tokenizer.json``: the shared German-English subword tokenizer;
- ``recipe.json``: how it was trained; ``results.json``: its sacreBLEU scores on test2016.

Lessons load it with ``load_course_model()``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tfx_course.data.multi30k import load_multi30k
from tfx_course.data.subword import SubwordTokenizer
from tfx_course.evaluation import evaluate_translation
from tfx_course.files import atomic_open, write_json
from tfx_course.model import ModelConfig, Transformer
from tfx_course.training import load_checkpoint

__all__ = [
    "gpu_results_summary",
    "MODEL_FORMAT",
    "COURSE_CHECKPOINT",
    "course_checkpoint_dir",
    "export_model",
    "load_model",
    "load_course_model",
    "model_from_training_checkpoint",
    "score_test2016",
    "SUBSET_SIZE",
    "BEAM_SIZE",
    "export_course_checkpoint",
]

MODEL_FORMAT = "tfx_course.model/1"
SUBSET_SIZE = 100  # test2016 sentences the checkpoint test re-scores (first n, in file order)
BEAM_SIZE = 5  # beam width of the recorded beam-search score
LENGTH_PENALTY = 0.6  # decoding.translate's default GNMT alpha, recorded beside the beam score
# Package data, installed with the package; $TFX_COURSE_CHECKPOINT points elsewhere.
COURSE_CHECKPOINT = Path(__file__).resolve().parent / "course_checkpoint"


def course_checkpoint_dir() -> Path:
    """Return the folder of the shipped course model (``$TFX_COURSE_CHECKPOINT`` if set)."""
    env = os.environ.get("TFX_COURSE_CHECKPOINT")
    return Path(env).expanduser() if env else COURSE_CHECKPOINT


def export_model(
    model: Transformer, path: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> Path:
    """Write ``model``'s config and weights (cast to ``dtype``) for ``load_model``.

    Tied weights stay shared, so they are stored once.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"export_model writes a Transformer, got {type(model).__name__}")
    weights = copy.deepcopy(model).to(dtype).state_dict()  # casting the module keeps ties
    payload = {
        "format": MODEL_FORMAT,
        "model_config": dataclasses.asdict(model.config),
        "dtype": str(dtype).removeprefix("torch."),
        "state_dict": weights,
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return Path(path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    """Read a model written by ``export_model`` (weights_only=True), in float32 eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a model file written by export_model ({MODEL_FORMAT})")
    model = Transformer(ModelConfig(**payload["model_config"]))
    model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    return model.to(device).eval()


def load_course_model(
    folder: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> tuple[Transformer, SubwordTokenizer]:
    """Return the shipped course model (eval mode) and its tokenizer.

    ``folder`` defaults to ``course_checkpoint_dir()`` (the package's ``course_checkpoint/``).
    """
    folder = Path(folder) if folder is not None else course_checkpoint_dir()
    missing = [n for n in ("model.pt", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found in {folder}; the course model ships inside the "
            "package, in tfx_course/course_checkpoint/ (set TFX_COURSE_CHECKPOINT to use another "
            "folder)"
        )
    return load_model(folder / "model.pt", device), SubwordTokenizer.load(folder / "tokenizer.json")


def model_from_training_checkpoint(path: str | os.PathLike) -> Transformer:
    """Rebuild the model saved in a ``fit`` checkpoint (float32, eval mode)."""
    checkpoint = load_checkpoint(path)
    if checkpoint.model_config is None:
        raise ValueError(f"{path} holds no model config; it was not saved from a Transformer")
    model = Transformer(ModelConfig(**checkpoint.model_config))
    model.load_state_dict(checkpoint.model_state)
    return model.eval()


def score_test2016(
    model: Transformer,
    tokenizer: SubwordTokenizer,
    *,
    limit: int | None = None,
    beam_size: int | None = None,
    root: str | os.PathLike | None = None,
    max_len: int = 80,
    batch_size: int = 100,
) -> dict[str, Any]:
    """Translate test2016 (its first ``limit`` sentences if given) and return sacreBLEU scores.

    ``evaluation.evaluate_translation`` translates and scores; the result is its
    ``BleuResult.to_dict()`` plus ``decoder`` ("greedy" or "beam k") and ``sentences``.
    """
    pairs = load_multi30k("test2016", root)[:limit]
    method = "greedy" if beam_size is None else "beam"
    result = evaluate_translation(
        model, tokenizer, pairs, method, beam_size=beam_size or 1, length_penalty=LENGTH_PENALTY,
        batch_size=batch_size, max_len=max_len,
    )  # fmt: skip
    return {**result.bleu.to_dict(), "decoder": result.method, "sentences": len(pairs)}


def export_course_checkpoint(
    run_dir: str | os.PathLike,
    dest: str | os.PathLike,
    recipe: dict[str, Any],
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Turn a finished training folder into the shipped checkpoint folder ``dest``.

    Writes ``model.pt`` (float16), ``tokenizer.json``, ``recipe.json`` (``recipe`` plus the
    run's summary), ``results.json`` (greedy sacreBLEU on all of test2016 and on its first
    ``SUBSET_SIZE`` sentences, both scored from the float16 weights as shipped; beam search
    with ``BEAM_SIZE`` on all of test2016 when ``tfx_course.decoding`` offers it),
    ``curves.png`` and ``history.json``. Returns the results.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    export_model(model_from_training_checkpoint(run_dir / "checkpoint.pt"), dest / "model.pt")
    for name in ("tokenizer.json", "history.json", "curves.png"):  # curves: drawn by the CLI
        if name != "curves.png" or (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / name)
    model, tokenizer = load_course_model(dest)
    run = json.loads((run_dir / "run.json").read_text())
    decode_max_len = run["preset"]["decode_max_len"]
    results = {
        "test2016_greedy": score_test2016(model, tokenizer, root=root, max_len=decode_max_len),
        "test2016_subset_greedy": score_test2016(
            model, tokenizer, limit=SUBSET_SIZE, root=root, max_len=decode_max_len
        ),
        "test2016_beam": score_test2016(
            model, tokenizer, beam_size=BEAM_SIZE, root=root, max_len=decode_max_len
        ),
        "weights": "float16 model.pt, run in float32",
        "decode_max_len": decode_max_len,
    }
    results["test2016_beam"]["length_penalty"] = LENGTH_PENALTY
    write_json(dest / "recipe.json", {**recipe, "run": run})
    write_json(dest / "results.json", results)
    return results


def gpu_results_summary(path: str | os.PathLike) -> str | None:
    """Return a short report of a ``tools/gpu/gpu_run.py`` results file, or None if absent.

    The caller names the file (e.g. the repository's ``results/gpu_base.json``): the package
    never looks for it.

    One line each: device, parameters, steps, training time and throughput, and the test2016
    sacreBLEU scores (cased and lower-cased) of every decoder that was scored.
    """
    path = Path(path)
    if not path.exists():
        return None
    r = json.loads(path.read_text(encoding="utf-8"))
    finished = (
        "schedule finished" if r["finished_schedule"] else "stopped before the schedule's end"
    )
    mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
    lines = [
        f"{'device':<18}{r['device']} (torch {r['torch']})",
        f"{'parameters':<18}{r['parameters']:,}",
        f"{'steps':<18}{r['steps']:,} ({finished})",
        f"{'training':<18}{r['train_seconds'] / 60:.1f} min, "
        f"{r['target_tokens_per_second']:,.0f} target tokens/s{mfu}",
    ]
    signature = None
    for key in ("test2016_greedy", "test2016_beam"):
        score = r.get(key)
        if score:
            lines.append(
                f"{'test2016 ' + score['decoder']:<18}sacreBLEU {score['bleu']:.2f} cased, "
                f"{score['bleu_lowercase']:.2f} lower-cased ({score['sentences']} sentences)"
            )
            signature = score["signature"]
    if signature is None:
        lines.append(f"{'test2016':<18}not scored")
    else:
        lines.append(f"{'signature':<18}{signature}")
    return "\n".join(lines)
