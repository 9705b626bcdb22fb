"""A character-level tokenizer with the course's four special tokens.

Every tokenizer in the course uses the same special ids, so models, batching and decoding
can rely on them: ``PAD=0`` (padding), ``BOS=1`` (begin of sequence), ``EOS=2`` (end of
sequence), ``UNK=3`` (a character the vocabulary does not hold).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from tfx_course.files import atomic_open

__all__ = [
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "UNK_ID",
    "SPECIAL_TOKENS",
    "Tokenizer",
    "TokenizerBase",
    "CharTokenizer",
]

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
_FORMAT = "tfx_course.CharTokenizer/1"


@runtime_checkable
class Tokenizer(Protocol):
    """What batching and decoding need from a tokenizer (character- or subword-level)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str, add_special: bool = True) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class TokenizerBase:
    """What every course tokenizer shares: the special ids, BOS ... EOS wrapping, id checks.

    A subclass provides ``vocab_size``, ``_encode_text(text) -> ids`` (no specials) and
    ``_decode_ids(ids) -> text`` (ids without specials).
    """

    vocab_size: int

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Return the ids of ``text``, wrapped in BOS ... EOS when ``add_special``."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = self._encode_text(text)
        return [BOS_ID, *ids, EOS_ID] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of ``ids``: stop at the first EOS, skip PAD, BOS and UNK.

        Accepts a list of ints or a 1-D tensor (e.g. one row of ``greedy_decode``'s output).
        """
        kept = []
        for i in (int(i) for i in ids):
            if i == EOS_ID:
                break
            self._check_id(i)
            if i >= len(SPECIAL_TOKENS):
                kept.append(i)
        return self._decode_ids(kept)

    def _check_id(self, i: int) -> None:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"id {i} is out of range for a vocabulary of {self.vocab_size}")

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_ids(self, ids: list[int]) -> str:
        raise NotImplementedError


class CharTokenizer(TokenizerBase):
    """Map each character to an id; ids 0-3 are the special tokens.

    ``encode`` wraps the ids in BOS ... EOS and maps unknown characters to UNK;
    ``decode`` stops at the first EOS and skips the other special tokens.
    """

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer needs single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dupes = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer got duplicate characters {dupes!r}")
        self.chars: tuple[str, ...] = tuple(chars)
        self._ids = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """Build a vocabulary of every character in ``texts``, in sorted order."""
        if isinstance(texts, str):
            raise TypeError("from_texts expects a list of strings, not one string; wrap it: [text]")
        return cls(sorted(set().union(*(set(t) for t in texts))))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(SPECIAL_TOKENS) + len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={''.join(self.chars)!r})"

    def _encode_text(self, text: str) -> list[int]:
        return [self._ids.get(c, UNK_ID) for c in text]

    def _decode_ids(self, ids: list[int]) -> str:
        return "".join(self.chars[i - len(SPECIAL_TOKENS)] for i in ids)

    def token(self, i: int) -> str:
        """Return the text of one id, special tokens by name (for printing and plots)."""
        self._check_id(i)
        return SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else self.chars[i - len(SPECIAL_TOKENS)]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary to a json file (atomically) and return its path."""
        path = Path(path)
        payload = {"format": _FORMAT, "specials": list(SPECIAL_TOKENS), "chars": list(self.chars)}
        with atomic_open(path) as f:
            json.dump(payload, f, ensure_ascii=False, indent=1)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """Read a vocabulary written by ``save``."""
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a CharTokenizer file (expected format {_FORMAT!r})")
        if tuple(payload["specials"]) != SPECIAL_TOKENS:
            raise ValueError(
                f"{path} uses special tokens {payload['specials']}, expected {list(SPECIAL_TOKENS)}"
            )
        return cls(payload["chars"])
