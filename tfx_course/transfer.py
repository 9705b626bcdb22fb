"""Transfer learning: start a new translation direction from a trained model's parts.

``transfer_parts`` builds a fresh ``Transformer`` for a new source vocabulary and copies the
chosen parts of a trained one into it. The course uses it for French to English: the course
checkpoint (German to English) already has an English decoder, so a French model can start
from that decoder, its English embedding and output layer (tied, one matrix) and keep the
course's English vocabulary, while its encoder and French embedding start from random weights.

What "decoder" copies: ``decoder.*`` (the target embedding, every decoder layer with its
self-attention, cross-attention and feed-forward weights, and the final norm) and ``lm_head.*``
(with tied embeddings its weight is the decoder embedding itself). "encoder_layers" also copies
``encoder.layers.*`` and ``encoder.norm.*``, but never the source embedding, whose vocabulary
belongs to the old source language.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from tfx_course.model import Transformer
from tfx_course.repro import seed_everything

__all__ = ["PARTS", "transfer_parts"]

PARTS: dict[str, tuple[str, ...]] = {
    "decoder": ("decoder.", "lm_head."),
    "encoder_layers": ("encoder.layers.", "encoder.norm."),
}


def transfer_parts(
    trained: Transformer,
    src_vocab_size: int,
    parts: Sequence[str] = ("decoder",),
    seed: int = 0,
) -> tuple[Transformer, list[str]]:
    """Return a new model for ``src_vocab_size`` source ids, with ``parts`` copied from ``trained``.

    The new model has ``trained``'s sizes and target vocabulary; it is initialised from
    ``seed`` and then the parameters (and buffers) of ``parts`` are overwritten with copies of
    ``trained``'s. Returns the model (training mode, on ``trained``'s device) and the names of
    the state entries that were copied.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}: choose from {sorted(PARTS)}")
    config = dataclasses.replace(trained.config, src_vocab_size=src_vocab_size)
    seed_everything(seed)
    model = Transformer(config).to(trained.device)
    prefixes = tuple(prefix for part in parts for prefix in PARTS[part])
    source = trained.state_dict()
    copied = [name for name in model.state_dict() if name.startswith(prefixes)]
    with torch.no_grad():
        model.load_state_dict({name: source[name].clone() for name in copied}, strict=False)
    return model.train(), copied
