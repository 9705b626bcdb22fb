"""A subword (BPE) tokenizer for real text, trained with the Hugging Face ``tokenizers`` library.

The same algorithm as ``tfx_course.data.bpe``, in fast Rust. Choices, and why:

- **One vocabulary shared by German and English.** Both use the Latin alphabet and share many
  subwords (names, numbers, "Mann"/"man"); one vocabulary lets a model tie its source, target
  and output embeddings, as the original Transformer did with its shared 37k BPE vocabulary for
  English-German, and leaves a single file to ship with a checkpoint. Separate vocabularies
  would make the target softmax a little smaller; nothing here prevents training two.
- **Metaspace pre-tokenizer, then punctuation split.** Each space becomes ``▁`` at the start of
  the next word, so the tokens keep every space and decoding gives back the exact text; tokens
  stay readable ("▁Männer"), unlike byte-level BPE ("Ä", "Ġ"). Splitting punctuation off keeps
  "bushes." from using up vocabulary entries of its own.
- **Special tokens at ids 0-3**, the same as ``CharTokenizer``: ``<pad>``, ``<bos>``, ``<eos>``,
  ``<unk>``. ``encode`` adds BOS ... EOS; ``decode`` stops at EOS and drops specials.

Exact round trip holds for text whose characters all occur in the training texts (any other
character becomes ``<unk>`` and is lost) and that does not start with a space.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tfx_course.data.tokenizers import (
    BOS_ID,
    EOS_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    TokenizerBase,
)
from tfx_course.files import atomic_write_text

__all__ = ["SubwordTokenizer", "train_subword_tokenizer"]

METASPACE = "▁"  # U+2581, marks "a space came before this"


class SubwordTokenizer(TokenizerBase):
    """Encode text to subword ids and back; wraps a trained ``tokenizers.Tokenizer``.

    Build one with ``train_subword_tokenizer`` or ``SubwordTokenizer.load(path)``.
    """

    def __init__(self, tokenizer: HFTokenizer) -> None:
        found = [tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS))]
        if tuple(found) != SPECIAL_TOKENS:
            raise ValueError(
                f"the special tokens must be {list(SPECIAL_TOKENS)} at ids 0-3, found {found}; "
                "train with train_subword_tokenizer, which puts them there"
            )
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubwordTokenizer) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"

    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str], add_special: bool = True) -> list[list[int]]:
        """Encode many texts at once (in parallel threads); same ids as ``encode`` on each."""
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_batch expects strings, got {bad[0]}")
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        if add_special:
            return [[BOS_ID, *e.ids, EOS_ID] for e in encodings]
        return [e.ids for e in encodings]

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def tokens(self, text: str) -> list[str]:
        """Return the subword strings of ``text`` (no BOS/EOS), for printing."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def token(self, i: int) -> str:
        """Return the text of one id, special tokens by name (for printing and plots)."""
        self._check_id(i)
        return self.tokenizer.id_to_token(i)

    def to_json(self) -> str:
        """Return the whole tokenizer (model, merges, pre-tokenizer, decoder) as json text."""
        return self.tokenizer.to_str()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer to one json file (atomically) and return its path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SubwordTokenizer:
        """Read a tokenizer written by ``save``."""
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as err:  # the library raises a bare Exception on bad json
            raise ValueError(f"{path} is not a tokenizer json file: {err}") from err
        return cls(tokenizer)


def train_subword_tokenizer(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2
) -> SubwordTokenizer:
    """Learn BPE merges on ``texts`` until the vocabulary holds ``vocab_size`` ids.

    Every character of ``texts`` gets an id, so a small corpus with many characters can end up
    above ``vocab_size``; a corpus with too few distinct pairs can end up below it. Merges need
    a pair to occur at least ``min_frequency`` times. The same texts always give the same
    tokenizer.
    """
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, not one string; wrap it: [text]")
    if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size!r} must be an int above {len(SPECIAL_TOKENS)} (the specials)"
        )
    tokenizer = HFTokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # given first, so they get ids 0-3
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return SubwordTokenizer(tokenizer)
