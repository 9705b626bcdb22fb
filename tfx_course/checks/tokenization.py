"""Checks for lesson 08 (tokenization): the two steps of byte-pair encoding, counting symbol
pairs and merging one pair, and byte fallback for characters a vocabulary lacks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from tfx_course.checks.core import (
    CheckResult,
    Fail,
    call,
    run_check,
)
from tfx_course.data.bpe import END_OF_WORD, merge_pair, pair_counts
from tfx_course.data.tokenizers import SPECIAL_TOKENS

__all__ = [
    "check_pair_counts",
    "check_merge_pair",
    "check_byte_fallback",
]

E = END_OF_WORD

# --- BPE: counting pairs ------------------------------------------------------------

_CORPUS = {
    ("l", "o", "w", E): 5,
    ("l", "o", "w", "e", "r", E): 2,
    ("n", "e", "w", "e", "s", "t", E): 6,
    ("w", "i", "d", "e", "s", "t", E): 3,
    ("a", "a", "a", E): 2,  # ("a", "a") occurs twice in this word
}


def _pairs_unweighted(corpus: Mapping[tuple[str, ...], int]) -> Counter:
    return pair_counts(dict.fromkeys(corpus, 1))


def _pairs_once_per_word(corpus: Mapping[tuple[str, ...], int]) -> Counter:
    counts: Counter = Counter()
    for symbols, freq in corpus.items():
        for pair in set(zip(symbols, symbols[1:], strict=False)):
            counts[pair] += freq
    return counts


def _pairs_without_last(corpus: Mapping[tuple[str, ...], int]) -> Counter:
    return pair_counts({symbols[:-1]: freq for symbols, freq in corpus.items()})


_PAIR_BUGS: dict[str, Callable[[Mapping[tuple[str, ...], int]], Counter]] = {
    "every pair counts its word's frequency, not 1: add freq for each occurrence": _pairs_unweighted,
    "a pair that occurs twice in a word counts twice (('a', 'a') in a a a </w>); do not "
    "deduplicate a word's pairs": _pairs_once_per_word,
    "missed the last pair of each word: a word of n symbols has n - 1 adjacent pairs, the last "
    "one ends with </w>": _pairs_without_last,
}


def _as_counts(value: Any, what: str) -> dict[tuple[str, str], int]:
    if not isinstance(value, Mapping):
        raise Fail(f"{what} returned a {type(value).__name__}; return a dict (or Counter) "
                   "from pair to count")  # fmt: skip
    counts = {}
    for key, count in value.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(s, str) for s in key)):
            raise Fail(f"{what} has the key {key!r}; keys must be pairs of symbols, e.g. ('l', 'o')")  # fmt: skip
        if isinstance(count, bool) or not isinstance(count, int | float) or count != int(count):
            raise Fail(f"{what} maps {key!r} to {count!r}; counts must be whole numbers")
        if count:
            counts[key] = int(count)
    return counts


def _pair_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    corpus = dict(_CORPUS)
    what = "pair_counts(corpus)"
    got = call(what, fn, corpus, timeout=timeout)
    if corpus != _CORPUS:
        raise Fail("pair_counts changed the corpus it was given; count without modifying it")
    got = _as_counts(got, what)
    expected = dict(pair_counts(corpus))
    if got == expected:
        return "counts every adjacent pair, weighted by the word's frequency, </w> included"
    for message, variant in _PAIR_BUGS.items():
        if got == dict(variant(corpus)):
            raise Fail(message)
    wrong = sorted(k for k in set(got) | set(expected) if got.get(k, 0) != expected.get(k, 0))
    pair = wrong[0]
    raise Fail(f"the pair {pair!r} has count {got.get(pair, 0)}, expected {expected.get(pair, 0)}")


def check_pair_counts(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(corpus) -> {pair: count}``: adjacent symbol pairs weighted by word counts."""
    return run_check("pair_counts", lambda: _pair_steps(fn, timeout))


# --- BPE: merging one pair ----------------------------------------------------------

_MERGE_CASES: list[tuple[tuple[str, ...], tuple[str, str]]] = [
    (("l", "o", "w", E), ("l", "o")),
    (("e", "s", "t", E), ("t", E)),
    (("a", "b", "a", "b", E), ("a", "b")),
    (("a", "a", "a", E), ("a", "a")),
    (("n", "e", "w", E), ("l", "o")),
    (("lo", "w", "e", "r", E), ("lo", "w")),
]


def _merge_first_only(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    for i in range(len(symbols) - 1):
        if (symbols[i], symbols[i + 1]) == pair:
            return (*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :])
    return symbols


def _merge_from_right(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = list(symbols), len(symbols) - 2
    while i >= 0:
        if (out[i], out[i + 1]) == pair:
            out[i : i + 2] = [out[i] + out[i + 1]]
            i -= 2
        else:
            i -= 1
    return tuple(out)


def _merge_overlapping(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out = []  # moves on by one symbol after a merge: the pair's second symbol is used again
    for i, symbol in enumerate(symbols):
        if i + 1 < len(symbols) and (symbol, symbols[i + 1]) == pair:
            out.append(symbol + symbols[i + 1])
        else:
            out.append(symbol)
    return tuple(out)


_MERGE_BUGS: dict[str, Callable[[tuple[str, ...], tuple[str, str]], tuple[str, ...]]] = {
    "only the first occurrence was merged: replace every occurrence, left to right "
    "(a b a b </w> with ('a', 'b') gives ab ab </w>)": _merge_first_only,
    "scan from the left: a a a </w> with ('a', 'a') gives aa a </w>, not a aa </w>": _merge_from_right,
    "after merging a pair, continue after it: its second symbol is used up (l o w </w> with "
    "('l', 'o') gives lo w </w>; occurrences must not overlap)": _merge_overlapping,
}


def _merge_steps(fn: Callable[..., Any], timeout: float | None) -> str:
    got = {}
    for symbols, pair in _MERGE_CASES:
        what = f"merge_pair({symbols!r}, {pair!r})"
        value = call(what, fn, symbols, pair, timeout=timeout)
        if not isinstance(value, tuple | list):
            raise Fail(f"{what} returned a {type(value).__name__}; return a tuple of symbols")
        if not all(isinstance(s, str) for s in value):
            raise Fail(f"{what} returned {value!r}; every symbol must be a string: join the pair "
                       "into one string, 'l' + 'o' = 'lo'")  # fmt: skip
        got[(symbols, pair)] = tuple(value)
    if all(value == merge_pair(*case) for case, value in got.items()):
        return "merges every occurrence, left to right, without overlaps; other pairs untouched"
    for message, variant in _MERGE_BUGS.items():
        if all(value == variant(*case) for case, value in got.items()):
            raise Fail(message)
    for (symbols, pair), value in got.items():
        if "".join(value) != "".join(symbols):
            raise Fail(f"merge_pair({symbols!r}, {pair!r}) returned {value!r}: the symbols must "
                       "still spell the word: use each symbol once, and join a pair with no "
                       "separator, 'l' + 'o' = 'lo'")  # fmt: skip
    (symbols, pair), value = next((c, v) for c, v in got.items() if v != merge_pair(*c))
    raise Fail(f"merge_pair({symbols!r}, {pair!r}) returned {value!r}, expected "
               f"{merge_pair(symbols, pair)!r}")  # fmt: skip


def check_merge_pair(fn: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check ``fn(symbols, pair) -> symbols``: every occurrence merged, left to right."""
    return run_check("merge_pair", lambda: _merge_steps(fn, timeout))


# --- byte fallback: no character is unknown (transfer) --------------------------------------

_CHARACTERS = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-äöüßÄÖÜ"
# The course's special tokens first, then the characters, then the 256 byte tokens: a byte's id
# is not 4 + its value, so an answer must look byte tokens up in the vocabulary.
_BYTE_VOCAB = {
    token: i
    for i, token in enumerate(
        [*SPECIAL_TOKENS, *_CHARACTERS, *(f"<0x{b:02X}>" for b in range(256))]
    )
}
_BYTE_TEXTS = ["Zwei Hunde spielen.", "Grüße aus Köln!", "café crème", "sushi 🍣", "line\nbreak", "日本", ""]  # fmt: skip
# Byte sequences that are not UTF-8, as a model may generate them, and the text they give.
_INVALID_BYTES = [(["<0xC3>", "a"], "\ufffda"), (["a", "<0xFF>"], "a\ufffd")]


def _byte_ids(text: str, fallback: Callable[[str], list[str]]) -> list[int]:
    """Encode ``text`` character by character; ``fallback`` spells an unknown character."""
    tokens = [t for c in text for t in ([c] if c in _BYTE_VOCAB else fallback(c))]
    return [_BYTE_VOCAB[t] for t in tokens]


def _utf8_tokens(c: str) -> list[str]:
    return [f"<0x{b:02X}>" for b in c.encode("utf-8")]


def _byte_text(ids: list[int], decode_run: Callable[[bytes], str], at_end: bool = False) -> str:
    """Decode ``ids``: characters as they are, each run of byte tokens with ``decode_run``."""
    names = {i: t for t, i in _BYTE_VOCAB.items()}
    out, run = [], bytearray()
    for token in (names[i] for i in ids):
        if len(token) == 6 and token.startswith("<0x"):
            run.append(int(token[3:5], 16))
            continue
        if run and not at_end:
            out.append(decode_run(bytes(run)))
            run.clear()
        out.append(token)
    return "".join(out) + (decode_run(bytes(run)) if run else "")


def _utf8(run: bytes) -> str:
    return run.decode("utf-8", errors="replace")


_ENCODE_BUGS: dict[str, Callable[[str], list[int]]] = {
    "an unknown character became <unk>: spell it with the <0xNN> tokens of its UTF-8 bytes, "
    "so that nothing is lost": lambda s: _byte_ids(s, lambda c: ["<unk>"]),
    "encode the character's UTF-8 bytes, c.encode('utf-8') (é is two bytes, C3 A9), not its "
    "code point or its Latin-1 byte": lambda s: _byte_ids(s, lambda c: [f"<0x{ord(c):02X}>"]),
    "every character was spelled in bytes: a character the vocabulary holds keeps its own id; "
    "fall back to bytes only for the others": lambda s: [
        _BYTE_VOCAB[t] for c in s for t in _utf8_tokens(c)
    ],
    "encode adds no special tokens: return only the ids of the text": lambda s: [
        _BYTE_VOCAB["<bos>"],
        *_byte_ids(s, _utf8_tokens),
        _BYTE_VOCAB["<eos>"],
    ],
}

_DECODE_BUGS: dict[str, Callable[[list[int]], str]] = {
    "each byte token was decoded on its own: collect consecutive byte tokens and decode their "
    "bytes together as UTF-8 (é is the two bytes C3 A9)": lambda ids: _byte_text(
        ids, lambda run: "".join(_utf8(bytes([b])) for b in run)
    ),
    "the bytes were decoded as Latin-1: decode them as UTF-8, bytes(run).decode('utf-8', "
    "errors='replace')": lambda ids: _byte_text(ids, lambda run: run.decode("latin-1")),
    "the bytes came out at the end: decode a run of byte tokens as soon as a character token "
    "follows it, so that the text keeps its order": lambda ids: _byte_text(ids, _utf8, True),
    "the byte tokens were dropped: turn each run of them back into bytes and decode it as "
    "UTF-8": lambda ids: _byte_text(ids, lambda run: ""),
}


def _as_ids(value: Any, what: str) -> list[int]:
    if hasattr(value, "tolist") and not isinstance(value, list | tuple):
        value = value.tolist()  # a tensor or an array of ids
    if not isinstance(value, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise Fail(f"{what} returned {value!r}; return a list of token ids (ints)")
    return list(value)


def _encode_case(tokenizer: Any, text: str, timeout: float | None) -> None:
    what = f"tokenizer.encode({text!r})"
    try:
        ids = _as_ids(call(what, tokenizer.encode, text, timeout=timeout), what)
    except Fail as failure:
        token = re.search(r"KeyError: '(<0x([^']*)>)'", str(failure))
        if token and len(token[2]) > 2:
            raise Fail(f"{what} looked up {token[1]}, a code point: encode the character's UTF-8 "
                       "bytes, c.encode('utf-8'), one <0xNN> token per byte") from None  # fmt: skip
        if token:
            raise Fail(f"{what} looked up {token[1]}, which the vocabulary does not hold: byte "
                       "tokens have two upper-case hex digits, f'<0x{b:02X}>' (<0x0A>, <0xC3>)") from None  # fmt: skip
        raise
    expected = _byte_ids(text, _utf8_tokens)
    if ids == expected:
        return
    for message, variant in _ENCODE_BUGS.items():
        try:
            wrong = variant(text)
        except KeyError:  # a mistake that cannot even spell this text
            continue
        if ids == wrong:
            raise Fail(message)
    raise Fail(f"{what} returned {ids}, expected {expected}")


def _decode_case(tokenizer: Any, ids: list[int], text: str, timeout: float | None) -> None:
    what = f"tokenizer.decode({ids})"
    try:
        got = call(what, tokenizer.decode, list(ids), timeout=timeout)
    except Fail as failure:
        if "UnicodeDecodeError" not in str(failure):
            raise
        hint = (
            "collect consecutive byte tokens and decode their bytes together, once"
            if "\ufffd" not in text
            else "bytes that are not UTF-8 (a model may generate them) must decode to U+FFFD, "
            "'\\ufffd': bytes.decode('utf-8', errors='replace')"
        )
        raise Fail(f"{failure} ({hint})") from None
    if not isinstance(got, str):
        raise Fail(f"{what} returned a {type(got).__name__}; return the text, one str")
    if got == text:
        return
    for message, variant in _DECODE_BUGS.items():
        if got == variant(ids):
            raise Fail(message)
    raise Fail(f"{what} returned {got!r}, expected {text!r}")


def _byte_fallback_steps(factory: Callable[..., Any], timeout: float | None) -> str:
    vocab = dict(_BYTE_VOCAB)
    name = getattr(factory, "__name__", "ByteFallbackTokenizer")
    tokenizer = call(f"{name}(vocab)", factory, vocab, timeout=timeout)
    if vocab != _BYTE_VOCAB:
        raise Fail(
            f"{name}(vocab) changed the vocabulary it was given; read it without changing it"
        )
    if type(tokenizer).__module__ == "builtins" or not all(
        callable(getattr(tokenizer, m, None)) for m in ("encode", "decode")
    ):
        raise Fail(f"{name}(vocab) gave a {type(tokenizer).__name__}; it must give a tokenizer "
                   "with the methods encode(text) and decode(ids)")  # fmt: skip
    for text in _BYTE_TEXTS:
        _encode_case(tokenizer, text, timeout)
    for text in _BYTE_TEXTS:
        _decode_case(tokenizer, _byte_ids(text, _utf8_tokens), text, timeout)
    for tokens, text in _INVALID_BYTES:
        _decode_case(tokenizer, [_BYTE_VOCAB[t] for t in tokens], text, timeout)
    return (
        "known characters keep their ids, unknown ones become the <0xNN> tokens of their UTF-8 "
        "bytes, and decode(encode(text)) == text (ü, é, 🍣, 日本, a line break); invalid bytes "
        "decode to U+FFFD"
    )


def check_byte_fallback(factory: Callable[..., Any], timeout: float | None = None) -> CheckResult:
    """Check a tokenizer built as ``factory(vocab)`` with ``encode(text)`` and ``decode(ids)``.

    A character of ``vocab`` encodes to its id, any other to the ``<0xNN>`` tokens of its UTF-8
    bytes; ``decode`` joins consecutive byte tokens and decodes them as UTF-8 (invalid bytes
    give U+FFFD).
    """
    return run_check("byte_fallback", lambda: _byte_fallback_steps(factory, timeout))
