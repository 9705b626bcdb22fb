"""German-to-English translation on Multi30k: presets, data pipeline, training run, results.

One recipe at three sizes (``PRESETS``): ``cpu-smoke`` (a minute on a laptop), ``cpu-course``
(the small model whose checkpoint ships with the course) and ``gpu-base`` (one GPU: 4.4 minutes of
training on an H100). ``train_translation`` trains a preset end to end: a shared BPE vocabulary for both
languages, token-count batches, the ``fit`` loop with checkpoints that resume, validation loss
and greedy BLEU on a validation subset after every epoch, and curves.

The same function runs under ``torchrun --nproc_per_node=N`` with DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tfx_course.data.batching import Seq2SeqBatch
from tfx_course.data.bucketing import make_token_batches
from tfx_course.data.multi30k import load_multi30k
from tfx_course.data.subword import SubwordTokenizer, train_subword_tokenizer
from tfx_course.decoding import translate
from tfx_course.distributed import Group, process_group
from tfx_course.evaluation import corpus_bleu
from tfx_course.files import write_json
from tfx_course.model import ModelConfig, Transformer
from tfx_course.repro import seed_everything
from tfx_course.training import History, TrainConfig, fit

__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "TranslationData",
    "prepare_data",
    "build_model",
    "translate_sorted",
    "bleu_of",
    "train_translation",
]


@dataclass(frozen=True)
class Preset:
    """A complete recipe: vocabulary, model sizes, batch size, optimisation and evaluation."""

    name: str
    description: str
    vocab_size: int = 8000  # one BPE vocabulary shared by German and English
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 2048
    dropout: float = 0.1
    max_len: int = 128  # longest sentence (in subwords) the model accepts; longer ones are dropped
    max_tokens: int = 4096  # padded slots per source (and per target) tensor of a batch
    train: TrainConfig = field(default_factory=TrainConfig)
    max_train_pairs: int | None = None  # use only the first n training pairs (smoke runs)
    max_val_pairs: int | None = None  # use only the first n validation pairs for the loss
    validate_every_epochs: int = 1  # validation loss and BLEU every n epochs (and at the end)
    bleu_sentences: int = 200  # validation sentences decoded greedily for BLEU at each validation
    decode_max_len: int = 80  # generated subwords at most (Multi30k's longest English: ~60)

    def __post_init__(self) -> None:
        if self.max_tokens < self.max_len + 1:
            raise ValueError(
                f"max_tokens={self.max_tokens} must be at least max_len + 1 = {self.max_len + 1} "
                "so that the longest sentence fits in a batch"
            )
        if self.bleu_sentences < 1:
            raise ValueError(f"bleu_sentences={self.bleu_sentences} must be positive")
        if self.validate_every_epochs < 1:
            raise ValueError(f"validate_every_epochs={self.validate_every_epochs} must be positive")

    def model_config(self, vocab_size: int) -> ModelConfig:
        """Return the ``ModelConfig`` for a shared vocabulary of ``vocab_size`` ids."""
        return ModelConfig(
            src_vocab_size=vocab_size,
            tgt_vocab_size=vocab_size,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers,
            d_ff=self.d_ff,
            dropout=self.dropout,
            max_len=self.max_len,
            tie_embeddings=True,
            fused_attention=True,
        )

    def replace(self, **changes: Any) -> Preset:
        """Return a copy with ``changes``; TrainConfig fields go to ``train``."""
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        own = {k: v for k, v in changes.items() if k not in train_fields}
        train = {k: v for k, v in changes.items() if k in train_fields}
        return dataclasses.replace(self, **own, train=dataclasses.replace(self.train, **train))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CPU_COURSE = Preset(
    name="cpu-course",
    description="the course checkpoint: 2.5M parameters, about 30 min on 2 CPU cores",
    vocab_size=6000,
    d_model=128,
    n_heads=4,
    n_encoder_layers=2,
    n_decoder_layers=2,
    d_ff=512,
    dropout=0.1,
    max_tokens=2000,
    bleu_sentences=200,
    train=TrainConfig(
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
    ),
)

PRESETS: dict[str, Preset] = {
    # The course model's shape on less data, a smaller vocabulary and 60 steps.
    "cpu-smoke": _CPU_COURSE.replace(
        name="cpu-smoke",
        description="checks the whole pipeline in about a minute on 2 CPU cores (BLEU near 0)",
        vocab_size=2000,
        max_tokens=1024,
        max_train_pairs=4000,
        bleu_sentences=50,
        decode_max_len=40,
        max_steps=60,
        warmup_steps=20,
        min_lr_ratio=0.0,
        checkpoint_every=30,
    ),
    "cpu-course": _CPU_COURSE,
    "gpu-base": Preset(
        name="gpu-base",
        description="d_model 512, 6 + 6 layers, 8k shared BPE, bf16 on one GPU: 4.4 min on an H100",
        vocab_size=8000,
        d_model=512,
        n_heads=8,
        n_encoder_layers=6,
        n_decoder_layers=6,
        d_ff=2048,
        dropout=0.3,  # 29k sentence pairs: a model this size overfits without heavy dropout
        max_tokens=8192,
        bleu_sentences=300,
        validate_every_epochs=5,  # keep the 10-minute budget for training
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
) -> TranslationData:
    """Load Multi30k, train (or reuse) the shared tokenizer and cut token-count batches."""
    train = load_multi30k("train", root)
    if preset.max_train_pairs is not None:
        train = train[: preset.max_train_pairs]
    val = load_multi30k("val", root)
    if preset.max_val_pairs is not None:
        val = val[: preset.max_val_pairs]
    if tokenizer is None:
        texts = [de for de, _ in train] + [en for _, en in train]
        tokenizer = train_subword_tokenizer(texts, preset.vocab_size)
    train_ids = _encode_pairs(tokenizer, train, preset.max_len)
    val_ids = _encode_pairs(tokenizer, val, preset.max_len)
    seed = preset.train.seed
    return TranslationData(
        tokenizer=tokenizer,
        train_batches=make_token_batches(train_ids, preset.max_tokens, seed=seed),
        val_batches=make_token_batches(val_ids, preset.max_tokens, shuffle=False),
        val_pairs=val[: preset.bleu_sentences],
        n_train_pairs=len(train_ids),
    )


def build_model(preset: Preset, vocab_size: int, seed: int = 0) -> Transformer:
    """Return a freshly initialised model of ``preset`` (seeded, so the same every time)."""
    seed_everything(seed)
    return Transformer(preset.model_config(vocab_size))


def translate_sorted(
    model: nn.Module,
    texts: Sequence[str],
    tokenizer: SubwordTokenizer,
    max_len: int = 80,
    batch_size: int = 100,
    beam_size: int | None = None,
) -> list[str]:
    """Translate (greedy, or beam search with ``beam_size``), batching sentences of similar
    length together; the outputs come back in the input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunk = [texts[i] for i in order]
    if beam_size is None:
        outputs = translate(model, chunk, tokenizer, tokenizer, max_len, batch_size)
    else:
        outputs = translate(model, chunk, tokenizer, tokenizer, max_len, batch_size, beam_size)
    result = [""] * len(texts)
    for i, text in zip(order, outputs, strict=True):
        result[i] = text
    return result


def bleu_of(
    model: nn.Module,
    pairs: Sequence[tuple[str, str]],
    tokenizer: SubwordTokenizer,
    max_len: int = 80,
    batch_size: int = 100,
) -> dict[str, Any]:
    """Translate the German side of ``pairs`` greedily and score it against the English side."""
    hypotheses = translate_sorted(model, [de for de, _ in pairs], tokenizer, max_len, batch_size)
    return corpus_bleu(hypotheses, [en for _, en in pairs])


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
        return {"bleu": bleu_of(model, data.val_pairs, data.tokenizer, preset.decode_max_len)["bleu"]}  # fmt: skip

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
