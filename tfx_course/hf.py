"""The course's model in the Hugging Face ``transformers`` conventions.

No architecture of ``transformers`` holds the course's model exactly: Marian and BART are
Post-LN (each sublayer's LayerNorm comes after the residual addition), and mBART, the Pre-LN
one, adds a LayerNorm right after the embeddings that the course's model does not have.
So the model is wrapped in a small ``PreTrainedModel`` subclass with its own configuration:
``save_pretrained`` writes ``config.json`` and ``model.safetensors``, ``from_pretrained``
reads them back, and ``generate`` decodes with ``transformers``' own search loop.

Shapes: B batch, S source length, T target length, C = d_model, V vocabulary size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tfx_course.attention import padding_mask
from tfx_course.data.tokenizers import BOS_ID, EOS_ID
from tfx_course.layers import SinusoidalPositionalEncoding, sinusoidal_encoding
from tfx_course.model import ModelConfig, Transformer, target_mask
from tfx_course.quantize import quiet_imports

with quiet_imports():  # transformers imports torchao when it is installed
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

__all__ = ["TfxTranslationConfig", "TfxTranslationModel", "from_course_model", "save", "load"]

_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]


class TfxTranslationConfig(PretrainedConfig):
    """A ``ModelConfig`` as a ``transformers`` configuration (``config.json``)."""

    model_type = "tfx_course_transformer"

    def __init__(self, model_config: dict[str, Any] | None = None, **kwargs: Any):
        self.model_config = dict(model_config or {"src_vocab_size": 8, "tgt_vocab_size": 8})
        pad_id = self.model_config.get("pad_id", 0)
        for name, value in (("pad_token_id", pad_id), ("bos_token_id", BOS_ID),
                            ("eos_token_id", EOS_ID), ("decoder_start_token_id", BOS_ID)):  # fmt: skip
            kwargs.setdefault(name, value)
        kwargs.setdefault("is_encoder_decoder", True)
        kwargs.setdefault("tie_word_embeddings", bool(self.model_config.get("tie_embeddings")))
        kwargs.setdefault("use_cache", False)  # the wrapper decodes without a KV cache
        kwargs.setdefault("num_hidden_layers", self.model_config.get("n_decoder_layers", 1))
        super().__init__(**kwargs)

    def to_model_config(self) -> ModelConfig:
        """Return the course's ``ModelConfig``."""
        return ModelConfig(**{k: v for k, v in self.model_config.items() if k in _FIELDS})


class _Encoder(nn.Module):
    """The encoder as ``generate`` calls it: keyword inputs in, ``BaseModelOutput`` out."""

    def __init__(self, transformer: Transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **_: Any) -> BaseModelOutput:  # fmt: skip
        return BaseModelOutput(last_hidden_state=self.transformer.encode(input_ids))


class TfxTranslationModel(PreTrainedModel, GenerationMixin):
    """The course's ``Transformer`` as a ``transformers`` encoder-decoder model.

    Shapes: input_ids (B, S), decoder_input_ids (B, T) -> logits (B, T, V). ``attention_mask``
    (B, S) marks real source tokens (1) and padding (0), as in ``transformers``; without it
    the padding is found from ``pad_token_id``. Decodes without a KV cache (``use_cache`` is
    ignored): each step runs the decoder on the whole prefix.
    """

    config_class = TfxTranslationConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _tied_weights_keys = {"transformer.lm_head.weight": "transformer.decoder.embed.embedding.weight"}  # fmt: skip

    def __init__(self, config: TfxTranslationConfig):
        super().__init__(config)
        self.transformer = Transformer(config.to_model_config())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Keep the course's initialisation; fill the sinusoidal tables, which are not saved.

        ``from_pretrained`` builds the model without memory and loads only the saved tensors:
        a buffer left out of the state dict has to be computed here.
        """
        if isinstance(module, SinusoidalPositionalEncoding):
            with torch.no_grad():
                table = sinusoidal_encoding(module.max_len, module.d_model)
                module.pe = table.to(module.pe.device) if module.pe.device.type != "meta" else table

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return _Encoder(self.transformer)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple[Tensor] | None = None,
        labels: Tensor | None = None,
        **_: Any,
    ) -> Seq2SeqLMOutput:
        pad_id = self.transformer.config.pad_id
        if encoder_outputs is None:
            encoder_outputs = _Encoder(self.transformer)(input_ids)
        memory = encoder_outputs[0]  # (B, S, C)
        if attention_mask is None:  # generate() passes the encoded source, not input_ids
            attention_mask = (
                input_ids != pad_id
                if input_ids is not None
                else torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
            )
        decoder = self.transformer.decoder
        x = decoder(decoder_input_ids, memory, target_mask(decoder_input_ids, pad_id),
                    padding_mask(attention_mask.bool()))  # fmt: skip
        logits = self.transformer.lm_head(x)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)  # fmt: skip
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=memory)

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        """Feed ``generate``'s growing output as the decoder's input, with the encoded source."""
        keep = ("encoder_outputs", "attention_mask")
        return {"decoder_input_ids": input_ids, **{k: kwargs.get(k) for k in keep}}


def from_course_model(model: Transformer) -> TfxTranslationModel:
    """Return a ``TfxTranslationModel`` holding a copy of ``model``'s weights (eval mode)."""
    if not isinstance(model, Transformer):
        raise TypeError(f"from_course_model takes a Transformer, got {type(model).__name__}")
    config = TfxTranslationConfig(model_config=dataclasses.asdict(model.config))
    hf_model = TfxTranslationModel(config)
    hf_model.transformer.load_state_dict(model.state_dict())
    return hf_model.to(torch.float32).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide ``transformers``' progress bars and load report while saving or loading."""
    from transformers.utils import logging

    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def save(model: TfxTranslationModel, folder: str | os.PathLike) -> Path:
    """Write ``model`` with ``save_pretrained`` (config.json, model.safetensors) into ``folder``."""
    with _quiet():
        model.save_pretrained(folder)
    return Path(folder)


def load(folder: str | os.PathLike) -> TfxTranslationModel:
    """Read a model written by ``save`` with ``from_pretrained`` (eval mode)."""
    with _quiet():
        return TfxTranslationModel.from_pretrained(folder).eval()
