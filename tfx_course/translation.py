"""German-to-English translation on Multi30k: the recipe's presets, its data and its run.

One recipe at three sizes (``PRESETS``): ``cpu-smoke`` (a minute on a laptop), ``cpu-course``
(the small model whose checkpoint ships with the course) and ``gpu-base`` (one GPU: 4.4 minutes
of training on an H100). A preset is a ``ModelConfig`` and a ``TrainConfig`` plus how the data
is cut. ``train_translation`` trains a preset end to end: a shared BPE vocabulary for both
languages, token-count batches, the ``fit`` loop with checkpoints that resume, and validation
loss and greedy BLEU (``evaluation.evaluate_translation``) on a validation subset.

The same function runs under ``torchrun --nproc_per_node=N`` with DistributedDataParallel
(``tfx_course.distributed``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.bucketing import (
    bucket_lengths,
    make_fixed_shape_batches,
    make_token_batches,
)
from tfx_course.data.multi30k import load_multi30k
from tfx_course.data.subword import SubwordTokenizer, train_subword_tokenizer
from tfx_course.distributed import Group, process_group
from tfx_course.evaluation import evaluate_translation
from tfx_course.files import write_json
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import History, TrainConfig, fit
from tfx_course.validation import check_positive_int

__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "TranslationData",
    "prepare_data",
    "build_model",
    "train_translation",
]


@dataclass(frozen=True)
class Preset:
    """A complete recipe: the model, the optimisation, and how the data and evaluation are cut.

    ``model``'s vocabulary sizes are those of the shared BPE vocabulary to train; its
    ``max_len`` is also the longest sentence (in subwords) kept for training. Variants:
    ``dataclasses.replace(preset, train=dataclasses.replace(preset.train, max_steps=10))``.
    """

    name: str
    description: str
    model: ModelConfig
    train: TrainConfig
    max_tokens: int = 4096  # padded slots per source (and per target) tensor of a batch
    max_train_pairs: int | None = None  # use only the first n training pairs (smoke runs)
    max_val_pairs: int | None = None  # use only the first n validation pairs for the loss
    validate_every_epochs: int = 1  # validation loss and BLEU every n epochs (and at the end)
    bleu_sentences: int = 200  # validation sentences decoded greedily for BLEU at each validation
    decode_max_len: int = 80  # generated subwords at most (Multi30k's longest English: ~60)

    def __post_init__(self) -> None:
        if self.model.src_vocab_size != self.model.tgt_vocab_size:
            raise ValueError(
                f"one BPE vocabulary serves both languages, so the model's vocabulary sizes must "
                f"agree, got {self.model.src_vocab_size} and {self.model.tgt_vocab_size}"
            )
        if self.max_tokens < self.model.max_len + 1:
            raise ValueError(
                f"max_tokens={self.max_tokens} must be at least max_len + 1 = "
                f"{self.model.max_len + 1} so that the longest sentence fits in a batch"
            )
        check_positive_int(
            bleu_sentences=self.bleu_sentences, validate_every_epochs=self.validate_every_epochs
        )

    @property
    def vocab_size(self) -> int:
        """The size of the shared BPE vocabulary the recipe trains."""
        return self.model.tgt_vocab_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_COURSE_TRAIN = TrainConfig(
    lr=2e-3,
    max_steps=700,
    warmup_steps=100,
    schedule="cosine",
    min_lr_ratio=0.05,
    label_smoothing=0.1,
    weight_decay=0.01,
    clip_norm=1.0,
    log_every=5,
    checkpoint_every=50,
)

PRESETS: dict[str, Preset] = {
    # The course model's shape on less data, a smaller vocabulary and 60 steps.
    "cpu-smoke": Preset(
        name="cpu-smoke",
        description="checks the whole pipeline in about a minute on 2 CPU cores (BLEU near 0)",
        model=ModelConfig.course(2000, 2000),
        train=dataclasses.replace(
            _COURSE_TRAIN, max_steps=60, warmup_steps=20, min_lr_ratio=0.0, checkpoint_every=30
        ),
        max_tokens=1024,
        max_train_pairs=4000,
        bleu_sentences=50,
        decode_max_len=40,
    ),
    "cpu-course": Preset(
        name="cpu-course",
        description="the course checkpoint: 2.5M parameters, about 30 min on 2 CPU cores",
        model=ModelConfig.course(6000, 6000),
        train=_COURSE_TRAIN,
        max_tokens=2000,
        bleu_sentences=200,
    ),
    "gpu-base": Preset(
        name="gpu-base",
        description="d_model 512, 6 + 6 layers, 8k shared BPE, bf16 on one GPU: 4.4 min on an H100",
        model=ModelConfig.base(8000, 8000),
        train=TrainConfig(
            lr=8e-4,
            max_steps=4000,  # about 60 epochs of ~65 batches
            warmup_steps=800,
            schedule="cosine",
            min_lr_ratio=0.05,
            label_smoothing=0.1,
            weight_decay=0.01,
            clip_norm=1.0,
            log_every=20,
            checkpoint_every=500,
            precision="bf16",
        ),
        max_tokens=8192,
        bleu_sentences=300,
        validate_every_epochs=5,  # keep the 10-minute budget for training
    ),
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass
class TranslationData:
    """Everything a run reads: tokenizer, batches and the text pairs used for BLEU."""

    tokenizer: SubwordTokenizer
    train_batches: list[Seq2SeqBatch]
    val_batches: list[Seq2SeqBatch]
    val_pairs: list[tuple[str, str]]  # (German, English) texts of the BLEU subset
    n_train_pairs: int
    # The encoded training pairs (source ids, target ids) the batches were cut from, to cut
    # them again (another token budget, fixed shapes).
    train_ids: list[tuple[list[int], list[int]]] = dataclasses.field(default_factory=list)
    lengths: tuple[int, ...] | None = None  # the padded lengths of fixed-shape batches, if any


def _encode_pairs(
    tokenizer: SubwordTokenizer, pairs: Sequence[tuple[str, str]], max_len: int
) -> list[tuple[list[int], list[int]]]:
    src = tokenizer.encode_batch([de for de, _ in pairs])
    tgt = tokenizer.encode_batch([en for _, en in pairs])
    # tgt_in and tgt_out drop one id each, so a target may be one longer than max_len.
    return [(s, t) for s, t in zip(src, tgt, strict=True) if len(s) <= max_len and len(t) <= max_len + 1]  # fmt: skip


def prepare_data(
    preset: Preset,
    root: str | os.PathLike | None = None,
    tokenizer: SubwordTokenizer | None = None,
    buckets: int | None = None,
) -> TranslationData:
    """Load Multi30k, train (or reuse) the shared tokenizer and cut token-count batches.

    With ``buckets``, the training batches have fixed shapes instead, for compiled training
    (``data.bucketing.make_fixed_shape_batches``): at most that many padded lengths, multiples
    of 4 chosen to waste the least padding, each with ``max_tokens // length`` rows.
    """
    train = load_multi30k("train", root)
    if preset.max_train_pairs is not None:
        train = train[: preset.max_train_pairs]
    val = load_multi30k("val", root)
    if preset.max_val_pairs is not None:
        val = val[: preset.max_val_pairs]
    if tokenizer is None:
        texts = [de for de, _ in train] + [en for _, en in train]
        tokenizer = train_subword_tokenizer(texts, preset.vocab_size)
    train_ids = _encode_pairs(tokenizer, train, preset.model.max_len)
    val_ids = _encode_pairs(tokenizer, val, preset.model.max_len)
    seed, lengths = preset.train.seed, None
    if buckets is None:
        train_batches = make_token_batches(train_ids, preset.max_tokens, seed=seed)
    else:
        sizes = [max(len(src), len(tgt) - 1) for src, tgt in train_ids]  # tgt_in drops one id
        lengths = bucket_lengths(sizes, buckets, multiple=4)
        train_batches = make_fixed_shape_batches(train_ids, lengths, preset.max_tokens, seed=seed)
    return TranslationData(
        tokenizer=tokenizer,
        train_batches=train_batches,
        val_batches=make_token_batches(val_ids, preset.max_tokens, shuffle=False),
        val_pairs=val[: preset.bleu_sentences],
        n_train_pairs=len(train_ids),
        train_ids=train_ids,
        lengths=lengths,
    )


def build_model(preset: Preset, vocab_size: int, seed: int = 0) -> Transformer:
    """Return a freshly initialised model of ``preset`` for a vocabulary of ``vocab_size`` ids.

    ``vocab_size`` is the trained tokenizer's (it may fall short of the preset's). Seeded, so
    the same every time.
    """
    seed_everything(seed)
    config = dataclasses.replace(preset.model, src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
    return Transformer(config)


def train_translation(
    preset: Preset,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    max_minutes: float | None = None,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    data: TranslationData | None = None,
) -> dict[str, Any]:
    """Train ``preset`` into the folder ``out``; return a summary (also written to run.json).

    ``out`` receives ``tokenizer.json``, ``checkpoint.pt`` (every ``checkpoint_every`` steps
    and at the end), ``history.json`` and ``run.json``. With ``resume`` a run stopped part-way
    (killed, or ``max_minutes`` reached) continues from its last checkpoint with the same
    tokenizer, step, optimizer and schedule. ``stop_after`` ends this call at that step
    (continue later with ``resume=True``). ``data`` is ``prepare_data``'s result for this
    preset when the caller has it already (a fresh run only: its tokenizer is saved).
    Under ``torchrun`` every process trains its share of each batch (DistributedDataParallel).
    """
    out = Path(out)
    with process_group(torch.device(device) if device else None) as group:
        data = data or _load_data(preset, out / "tokenizer.json", resume, data_root)
        if group.lead:
            data.tokenizer.save(out / "tokenizer.json")
        model = build_model(preset, data.tokenizer.vocab_size, preset.train.seed).to(group.device)
        config = dataclasses.replace(preset.train, eval_every=_eval_every(preset, data))
        history = fit(
            group.wrap(model),
            data.train_batches,
            config,
            data.val_batches,
            progress=progress,
            checkpoint_path=out / "checkpoint.pt",
            resume=resume,
            stop_after=stop_after,
            max_seconds=None if max_minutes is None else 60.0 * max_minutes,
            on_validate=_bleu_on_validation(preset, data),
            show_speed=True,
            extra={"preset": preset.to_dict()},
        )
        summary = _summary(preset, group, model, data, history)
        if group.lead:
            write_json(out / "history.json", history.to_dict())
            write_json(out / "run.json", summary)
    return summary


def _load_data(
    preset: Preset, tokenizer_path: Path, resume: bool, root: str | os.PathLike | None
) -> TranslationData:
    """Prepare the data, reusing the run's tokenizer when resuming."""
    reuse = resume and tokenizer_path.exists()
    return prepare_data(preset, root, SubwordTokenizer.load(tokenizer_path) if reuse else None)


def _eval_every(preset: Preset, data: TranslationData) -> int:
    return len(data.train_batches) * preset.validate_every_epochs


def _bleu_on_validation(
    preset: Preset, data: TranslationData
) -> Callable[[nn.Module, int], dict[str, float]]:
    """Return ``fit``'s ``on_validate``: greedy BLEU on the preset's validation subset."""

    def on_validate(model: nn.Module, step: int) -> dict[str, float]:
        args = (model, data.tokenizer, data.val_pairs)
        result = evaluate_translation(*args, max_len=preset.decode_max_len, batch_size=100)
        return {"bleu": result.bleu.score}

    return on_validate


def _summary(
    preset: Preset, group: Group, model: Transformer, data: TranslationData, history: History
) -> dict[str, Any]:
    """Return what a run reports in run.json: its set-up, length, speed and last scores."""
    return {
        "rank": group.rank,
        "preset": preset.to_dict(),
        "device": _device_name(group.device),
        "world_size": group.size,
        "parameters": model.num_parameters(),
        "train_pairs": data.n_train_pairs,
        "steps_per_epoch": len(data.train_batches),
        "steps": history.step[-1] if history.step else 0,
        "finished": bool(history.step) and history.step[-1] >= preset.train.max_steps,
        "train_seconds": history.train_seconds,
        "train_tokens": history.train_tokens,
        "tokens_per_second": history.tokens_per_second,
        "val_loss": history.val_loss[-1] if history.val_loss else None,
        "val_bleu_greedy": history.val_metrics.get("bleu", [None])[-1],
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU, {torch.get_num_threads()} threads"
    return device.type
