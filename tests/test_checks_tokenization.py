"""Lesson 08's checks (BPE and byte fallback): planted bugs are named,
other correct implementations pass."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from check_helpers import bugged, planted_bug_tests

from tfx_course import checks
from tfx_course.data.bpe import merge_pair, pair_counts

# --- pair_counts ----------------------------------------------------------------------


def _pairs(corpus, *, weighted=True, unique=False, last=True, as_string=False):
    counts = Counter()
    for symbols, freq in corpus.items():
        pairs = list(zip(symbols, symbols[1:], strict=False))
        if not last:
            pairs = pairs[:-1]
        for pair in set(pairs) if unique else pairs:
            counts["".join(pair) if as_string else pair] += freq if weighted else 1
    return counts


def _pairs_defaultdict(corpus):
    counts = defaultdict(int)
    for symbols, freq in corpus.items():
        for i in range(len(symbols) - 1):
            counts[symbols[i], symbols[i + 1]] += freq
    return dict(counts)


def _pairs_sum(corpus):
    keys = {p for s in corpus for p in zip(s, s[1:], strict=False)}
    return {
        k: sum(f * list(zip(s, s[1:], strict=False)).count(k) for s, f in corpus.items())
        for k in keys
    }


def _pairs_mutating(corpus):
    corpus.clear()
    return {}


# --- merge_pair -----------------------------------------------------------------------


def _merge(symbols, pair, *, first_only=False, overlap=False, sep=""):
    out, i = [], 0
    merged = False
    while i < len(symbols):
        here = i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair
        if here and not (first_only and merged):
            out.append(symbols[i] + sep + symbols[i + 1])
            merged = True
            i += 1 if overlap else 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _merge_right(symbols, pair):
    if len(symbols) < 2:
        return tuple(symbols)
    if (symbols[-2], symbols[-1]) == pair:
        return (*_merge_right(symbols[:-2], pair), symbols[-2] + symbols[-1])
    return (*_merge_right(symbols[:-1], pair), symbols[-1])


def _merge_recursive(symbols, pair):
    if len(symbols) < 2:
        return tuple(symbols)
    if (symbols[0], symbols[1]) == pair:
        return (symbols[0] + symbols[1], *_merge_recursive(symbols[2:], pair))
    return (symbols[0], *_merge_recursive(symbols[1:], pair))


def _merge_list(symbols, pair):
    out, skip = [], False
    for i, symbol in enumerate(symbols):
        if skip:
            skip = False
        elif i + 1 < len(symbols) and (symbol, symbols[i + 1]) == pair:
            out.append(symbol + symbols[i + 1])
            skip = True
        else:
            out.append(symbol)
    return out  # a list is accepted as well as a tuple


def _merge_tuples(symbols, pair):
    return tuple(
        (a, b) if (a, b) == pair else a for a, b in zip(symbols, symbols[1:], strict=False)
    )


BUGS = {
    "pair_counts": [
        (lambda c: _pairs(c, weighted=False), "frequency, not 1"),
        (lambda c: _pairs(c, unique=True), "do not deduplicate"),
        (lambda c: _pairs(c, last=False), "missed the last pair"),
        (lambda c: _pairs(c, as_string=True), "keys must be pairs"),
        (lambda c: list(_pairs(c).items()), "return a dict"),
        (_pairs_mutating, "changed the corpus"),
    ],
    "merge_pair": [
        (lambda s, p: _merge(s, p, first_only=True), "only the first occurrence"),
        (_merge_right, "scan from the left"),
        (lambda s, p: _merge(s, p, overlap=True), "must not overlap"),
        (lambda s, p: _merge(s, p, sep=" "), "no separator"),
        (_merge_tuples, "must be a string"),
        (lambda s, p: "".join(merge_pair(s, p)), "return a tuple"),
    ],
}

ALTERNATIVES = {
    "pair_counts": [_pairs, _pairs_defaultdict, _pairs_sum, lambda c: pair_counts(c)],
    "merge_pair": [_merge, _merge_recursive, _merge_list],
}

CHECKS = {name: getattr(checks, f"check_{name}") for name in BUGS}


# --- byte_fallback --------------------------------------------------------------------


class _ByteFallback:
    """Byte fallback with one planted bug (or none), named by ``bug``."""

    bug = ""

    def __init__(self, vocab):
        self.vocab, self.names = vocab, {i: t for t, i in vocab.items()}

    def _spell(self, c):
        if c in self.vocab and self.bug != "all_bytes":
            return [c]
        if self.bug == "unk":
            return ["<unk>"]
        if self.bug == "code_point":
            return [f"<0x{ord(c):02X}>"]
        form = "<0x{:x}>" if self.bug == "lower_hex" else "<0x{:X}>" if self.bug == "one_digit" else "<0x{:02X}>"  # fmt: skip
        return [form.format(b) for b in c.encode("utf-8")]

    def encode(self, text):
        ids = [self.vocab[t] for c in text for t in self._spell(c)]
        return [1, *ids, 2] if self.bug == "specials" else ids

    def _run(self, run):
        if self.bug == "per_byte":
            return "".join(bytes([b]).decode("utf-8", errors="replace") for b in run)
        if self.bug == "per_byte_strict":
            return "".join(bytes([b]).decode("utf-8") for b in run)
        if self.bug == "latin1":
            return bytes(run).decode("latin-1")
        return bytes(run).decode("utf-8", errors="strict" if self.bug == "strict" else "replace")

    def decode(self, ids):
        out, run = [], []
        for token in (self.names[i] for i in ids):
            if token.startswith("<0x") and len(token) == 6:
                run.append(int(token[3:5], 16))
                continue
            if run and self.bug != "at_end":
                out.append(self._run(run))
                run = []
            out.append(token)
        text = "".join(out) + (self._run(run) if run else "")
        return list(text) if self.bug == "char_list" else text


class _ByteFallbackRegex:
    """Correct: byte runs found with a regular expression over the token strings."""

    def __init__(self, vocab):
        self.vocab, self.names = vocab, dict(zip(vocab.values(), vocab, strict=True))

    def encode(self, text):
        return [
            self.vocab[c] if c in self.vocab else self.vocab["<0x%02X>" % b]  # noqa: UP031
            for c in text
            for b in ([0] if c in self.vocab else c.encode())
        ]

    def decode(self, ids):
        joined = "".join(self.names[i] for i in ids)
        parts = re.split(r"((?:<0x[0-9A-F]{2}>)+)", joined)
        return "".join(
            bytes(int(h, 16) for h in re.findall(r"<0x([0-9A-F]{2})>", p)).decode(errors="replace")
            if p.startswith("<0x")
            else p
            for p in parts
        )


class _ByteFallbackHF:
    """Correct, and written independently: Hugging Face tokenizers' BPE with byte_fallback."""

    def __init__(self, vocab):
        from tokenizers import Tokenizer, decoders, models

        self.tokenizer = Tokenizer(models.BPE(vocab=dict(vocab), merges=[], byte_fallback=True))
        self.tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])

    def encode(self, text):
        return self.tokenizer.encode(text).ids

    def decode(self, ids):
        return self.tokenizer.decode(ids)


BUGS["byte_fallback"] = [
    (bugged(_ByteFallback, "unk"), "became <unk>"),
    (bugged(_ByteFallback, "code_point"), "not its code point or its Latin-1 byte"),
    (bugged(_ByteFallback, "all_bytes"), "every character was spelled in bytes"),
    (bugged(_ByteFallback, "specials"), "encode adds no special tokens"),
    (bugged(_ByteFallback, "lower_hex"), "two upper-case hex digits"),
    (bugged(_ByteFallback, "one_digit"), "two upper-case hex digits"),
    (bugged(_ByteFallback, "per_byte"), "each byte token was decoded on its own"),
    (bugged(_ByteFallback, "per_byte_strict"), "decode their bytes together"),
    (bugged(_ByteFallback, "latin1"), "decoded as Latin-1"),
    (bugged(_ByteFallback, "at_end"), "the bytes came out at the end"),
    (bugged(_ByteFallback, "strict"), "errors='replace'"),
    (bugged(_ByteFallback, "char_list"), "return the text, one str"),
]
ALTERNATIVES["byte_fallback"] = [_ByteFallback, _ByteFallbackRegex, _ByteFallbackHF]
CHECKS["byte_fallback"] = checks.check_byte_fallback

test_planted_bug_is_named, test_other_correct_implementation_passes = planted_bug_tests(
    BUGS, ALTERNATIVES, CHECKS
)
