"""The ``tfx-course`` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _doctor(args: argparse.Namespace) -> int:
    from tfx_course import doctor

    report = doctor.run(verbose=True)
    return 1 if report.blocking or (args.strict and report.problems) else 0


# The names of tfx_course.data.datasets.DATASETS, here so that `--help` needs no torch import.
DATASETS = ("multi30k", "tatoeba")


def _data_sets(choice: str) -> list:
    """Return the data sets ``choice`` names ("all": every one), as ``DataSet`` rows."""
    from tfx_course.data.datasets import DATASETS as KNOWN

    return [KNOWN[name] for name in (DATASETS if choice == "all" else (choice,))]


def _data_download(args: argparse.Namespace) -> int:
    from tfx_course.data.download import DataError

    for data in _data_sets(args.dataset):
        try:
            folder = data.download(args.root, force=args.force)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{data.name}: all files present and verified in {folder}")
    return 0


def _data_status(args: argparse.Namespace) -> int:
    bad = []
    for data in _data_sets(args.dataset):
        states = data.status(args.root)
        print(f"{data.name} folder: {data.folder(args.root)}")
        for file, state in states.items():
            print(f"  {state:<8} {file}")
        bad += [file for file, state in states.items() if state != "ok"]
    if bad:
        print("Fix: run `tfx-course data download` (needs internet), or copy good files there.")
    return 1 if bad else 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="download and check the course data (Multi30k, Tatoeba)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    root_help = "data folder holding multi30k/ and tatoeba-fra-eng/ (default: $TFX_COURSE_DATA or ~/.cache/tfx_course)"  # fmt: skip
    set_help = "which data set (default: all of them)"
    p = data_sub.add_parser("download", help="fetch missing or corrupt files, check their sha256")
    p.add_argument("--root", default=None, help=root_help)
    p.add_argument("--force", action="store_true", help="download every file again")
    p.add_argument("--dataset", choices=[*DATASETS, "all"], default="all", help=set_help)
    p.set_defaults(func=_data_download)
    p = data_sub.add_parser("status", help="say which files are ok, missing or corrupt")
    p.add_argument("--root", default=None, help=root_help)
    p.add_argument("--dataset", choices=[*DATASETS, "all"], default="all", help=set_help)
    p.set_defaults(func=_data_status)


def draw_curves(history_path: Path, target: Path, title: str) -> Path | None:
    """Draw a run's curves from its history.json into ``target``; None without matplotlib."""
    from tfx_course.training import History

    try:
        from tfx_course.viz import save_curves
    except ModuleNotFoundError as err:  # a bare GPU machine: draw them later elsewhere
        if (err.name or "").split(".")[0] != "matplotlib":
            raise
        print(f"matplotlib is not installed: {target.name} not drawn (draw it from {history_path})")
        return None
    history = History.from_dict(json.loads(history_path.read_text(encoding="utf-8")))
    return save_curves(history, target, title)


def _train(args: argparse.Namespace) -> int:
    import torch

    from tfx_course.translation import get_preset, train_translation

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    train = {
        k: getattr(args, k) for k in ("max_steps", "lr", "seed") if getattr(args, k) is not None
    }
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, **train))
    if args.max_tokens is not None:
        preset = dataclasses.replace(preset, max_tokens=args.max_tokens)
    summary = train_translation(
        preset,
        args.out,
        resume=args.resume,
        max_minutes=args.max_minutes,
        device=args.device,
        data_root=args.data_root,
        progress=not args.no_progress,
    )
    if summary["rank"] == 0:
        out = Path(args.out)
        draw_curves(out / "history.json", out / "curves.png", f"Multi30k de-en, {preset.name}")
        bleu = summary["val_bleu_greedy"]
        print(
            f"step {summary['steps']}, {summary['tokens_per_second']:.0f} tokens/s, "
            f"val_loss {summary['val_loss']}, greedy val BLEU {bleu}; wrote {args.out}"
        )
    return 0


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a Multi30k German-English model (also under torchrun for several GPUs)",
    )
    from tfx_course.translation import PRESETS

    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="size and recipe")
    p.add_argument("--out", required=True, help="folder for checkpoint, tokenizer, curves")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after M min")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best found)")
    p.add_argument("--data-root", default=None, help="folder holding multi30k/")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--max-tokens", type=int, default=None, help="override tokens per batch")
    p.add_argument("--lr", type=float, default=None, help="override the peak learning rate")
    p.add_argument("--seed", type=int, default=None, help="override the seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _translate(args: argparse.Namespace) -> int:
    from tfx_course.decoding import translate
    from tfx_course.pretrained import course_checkpoint_dir, load_course_model

    folder = args.checkpoint if args.checkpoint is not None else course_checkpoint_dir()
    try:
        model, tokenizer = load_course_model(folder, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        print("error: give sentences as arguments, or one per line on stdin", file=sys.stderr)
        return 2
    from tfx_course.serve import InputError, check_text

    try:  # the same rules as the server's: no empty text, nothing longer than the model reads
        texts = [check_text(t, tokenizer, model.config.max_len) for t in texts]
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    max_len = min(args.max_len, model.config.max_len)
    try:
        outputs = translate(model, texts, tokenizer, tokenizer, max_len=max_len,
                            beam_size=args.beam, length_penalty=args.length_penalty)  # fmt: skip
    except ValueError as err:  # e.g. a sentence longer than the model's max_len
        print(f"error: {err}", file=sys.stderr)
        return 1
    for text in outputs:
        print(text)
    return 0


def _add_translate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "translate",
        help="translate German sentences to English with the course model (or another checkpoint)",
    )
    p.add_argument("texts", nargs="*", help="sentences to translate (default: lines of stdin)")
    p.add_argument("--checkpoint", default=None,
                   help="folder holding model.pt and tokenizer.json (default: the course model)")  # fmt: skip
    p.add_argument("--beam", type=int, default=None, metavar="N",
                   help="beam search with N beams (default: greedy decoding)")  # fmt: skip
    p.add_argument("--length-penalty", type=float, default=0.6,
                   help="GNMT length penalty exponent for beam search (0: none)")  # fmt: skip
    p.add_argument("--max-len", type=int, default=80, help="generate at most this many subwords")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.set_defaults(func=_translate)


def _serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from tfx_course.pretrained import course_checkpoint_dir, load_course_model
    from tfx_course.serve import BatchingTranslator, create_app, translator_for

    folder = args.checkpoint if args.checkpoint is not None else course_checkpoint_dir()
    try:
        model, tokenizer = load_course_model(folder)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.quantize is not None:
        from tfx_course.quantize import quantize_model

        model = quantize_model(model, args.quantize)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    translate_batch = translator_for(model, tokenizer, max_len=args.max_len)
    batcher = BatchingTranslator(translate_batch, args.max_batch, args.max_wait_ms / 1000)
    app = create_app(batcher, tokenizer, model.config.max_len)
    print(f"serving the translator on http://{args.host}:{args.port} (Ctrl-C stops it)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    from tfx_course.quantize import SCHEMES

    p = sub.add_parser(
        "serve", help="serve the translator over HTTP (JSON API with request batching, demo page)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--checkpoint", default=None,
                   help="folder holding model.pt and tokenizer.json (default: the course model)")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=16, help="most requests decoded together")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests after its first (ms)")  # fmt: skip
    p.add_argument("--max-len", type=int, default=80, help="generate at most this many subwords")
    p.add_argument("--quantize", choices=SCHEMES, default=None, help="int8 quantize first")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=_serve)


def _diagnose(args: argparse.Namespace) -> int:
    from tfx_course.diagnosis import diagnose

    try:
        history = json.loads(Path(args.history).read_text(encoding="utf-8"))
        found = diagnose(history)
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
        print(f"error: {args.history}: {err}", file=sys.stderr)
        return 2
    print(found)
    return 0 if found.symptom == "healthy" else 1


def _add_diagnose_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="read a run's history.json and name its symptom (diverged, unstable, plateau, "
        "overfitting or healthy); exit 0 if healthy, 1 if not",
    )
    p.add_argument("history", help="a history.json written by tfx-course train (History.to_dict())")
    p.set_defaults(func=_diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfx-course", description="Helpers for the tfx_course Transformer course."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "doctor",
        help="check Python, torch, JupyterLab, the kernel, the course checkpoint, disk space, "
        "the device and the course data (exit 1 if the course cannot run)",
    )
    p.add_argument(
        "--strict", action="store_true", help="exit with 1 on any problem, the data's too"
    )
    p.set_defaults(func=_doctor)
    _add_data_commands(sub)
    _add_train_command(sub)
    _add_translate_command(sub)
    _add_serve_command(sub)
    _add_diagnose_command(sub)
    from tfx_course.grading.cli import add_commands as add_grade_commands

    add_grade_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
