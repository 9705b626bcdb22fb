"""Tests for the from-scratch byte-pair encoding in tfx_course.data.bpe."""

import random
import re
from collections import Counter

import pytest

from tfx_course.data.bpe import (
    END_OF_WORD,
    Merge,
    apply_bpe,
    format_merge_history,
    learn_bpe,
    merge_history,
    merge_pair,
    pair_counts,
    split_word,
    word_counts,
)

# The example of Sennrich et al. (2016).
CLASSIC = {"low": 5, "lower": 2, "newest": 6, "widest": 3}


def _reference_bpe(counts: dict[str, int], n_merges: int) -> list[tuple[tuple[str, str], int]]:
    """Independent version in the style of the paper: words as space-joined strings and a regex."""
    vocab = {" ".join([*word, END_OF_WORD]): c for word, c in counts.items()}
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for word, c in vocab.items():
            symbols = word.split(" ")
            for i in range(len(symbols) - 1):
                pairs[symbols[i], symbols[i + 1]] = pairs.get((symbols[i], symbols[i + 1]), 0) + c
        if not pairs:
            break
        top = max(pairs.values())
        best = sorted(p for p, c in pairs.items() if c == top)[0]
        pattern = re.compile(r"(?<!\S)" + re.escape(" ".join(best)) + r"(?!\S)")
        vocab = {pattern.sub("".join(best), word): c for word, c in vocab.items()}
        merges.append((best, top))
    return merges


def test_first_merges_of_the_classic_example_match_a_hand_count():
    # Pairs counted by hand, each weighted by its word's count:
    #   e+s: newest 6 + widest 3 = 9;  s+t: 9;  t+</w>: 9;  w+e: lower 2 + newest 6 = 8;
    #   l+o: low 5 + lower 2 = 7;  o+w: 7;  n+e: 6;  e+w: 6;  w+</w>: 5; ...
    # Three pairs tie at 9 and ties go to the pair that sorts first: e+s.
    # Then es+t (9, ties with t+</w> and sorts first), est+</w> (9), l+o (7, ties with o+w), lo+w (7).
    merges = learn_bpe(CLASSIC, 5)
    assert [(m.pair, m.count) for m in merges] == [
        (("e", "s"), 9),
        (("es", "t"), 9),
        (("est", END_OF_WORD), 9),
        (("l", "o"), 7),
        (("lo", "w"), 7),
    ]
    assert merges[2].merged == "est" + END_OF_WORD
    # "lowest" was never seen, yet it splits into pieces that were: low + est</w>.
    assert apply_bpe("lowest", merges) == ["low", "est" + END_OF_WORD]


def test_first_merge_equals_a_count_over_the_expanded_corpus():
    rng = random.Random(1)
    words = ["".join(rng.choice("abcd") for _ in range(rng.randint(1, 6))) for _ in range(300)]
    # count pair occurrences one word occurrence at a time, no word counts involved
    counts: Counter = Counter()
    for word in words:
        symbols = [*word, END_OF_WORD]
        for i in range(len(symbols) - 1):
            counts[symbols[i], symbols[i + 1]] += 1
    top = max(counts.values())
    first = learn_bpe([" ".join(words)], 1)[0]
    assert first.count == top
    assert first.pair == min(p for p, c in counts.items() if c == top)


def test_learn_bpe_matches_an_independent_implementation():
    rng = random.Random(0)
    counts = {
        "".join(rng.choice("abcde") for _ in range(rng.randint(1, 8))): rng.randint(1, 20)
        for _ in range(60)
    }
    ours = [(m.pair, m.count) for m in learn_bpe(counts, 40)]
    assert ours == _reference_bpe(counts, 40)
    assert len(ours) == 40


def test_apply_bpe_reproduces_the_training_segmentation():
    merges = learn_bpe(CLASSIC, 10)
    pieces = {word: apply_bpe(word, merges) for word in CLASSIC}
    for word, segments in pieces.items():
        assert "".join(segments) == word + END_OF_WORD  # nothing lost or added
    # the corpus length in symbols after 10 merges, recomputed from the segmentations
    assert merge_history(CLASSIC, 10)[-1].n_tokens == sum(
        len(pieces[w]) * c for w, c in CLASSIC.items()
    )
    # plain tuples work as merges too, and no merges leaves the characters
    assert apply_bpe("lower", [m.pair for m in merges]) == pieces["lower"]
    assert apply_bpe("low", []) == ["l", "o", "w", END_OF_WORD]


def test_merge_history_sizes_move_as_expected():
    history = merge_history(CLASSIC, 8)
    alphabet = len({s for w in CLASSIC for s in split_word(w)})  # l o w e r n s t i d </w>
    assert alphabet == 11
    assert [s.step for s in history] == list(range(1, 9))
    assert [s.vocab_size for s in history] == [alphabet + k for k in range(1, 9)]
    start = sum(len(split_word(w)) * c for w, c in CLASSIC.items())
    for k, step in enumerate(history, start=1):
        expected = sum(len(apply_bpe(w, learn_bpe(CLASSIC, k))) * c for w, c in CLASSIC.items())
        assert step.n_tokens == expected < start
    table = format_merge_history(history)
    assert len(table.splitlines()) == 1 + len(history)
    assert "'est</w>'" in table


def test_learning_stops_when_every_word_is_one_symbol():
    merges = learn_bpe({"ab": 3}, 10)
    assert merges == [Merge(("a", "b"), 3), Merge(("ab", END_OF_WORD), 3)]
    assert apply_bpe("ab", merges) == ["ab" + END_OF_WORD]


def test_texts_and_word_counts_give_the_same_merges():
    texts = ["low low lower", "  newest\tnewest  "]
    assert word_counts(texts) == Counter({"low": 2, "lower": 1, "newest": 2})
    assert learn_bpe(texts, 6) == learn_bpe({"low": 2, "lower": 1, "newest": 2}, 6)


def test_bad_input_gets_clear_errors():
    with pytest.raises(TypeError, match="list of texts"):
        learn_bpe("low lower", 3)
    with pytest.raises(ValueError, match="n_merges"):
        learn_bpe(CLASSIC, -1)
    with pytest.raises(ValueError, match="positive"):
        learn_bpe({"low": 0}, 3)
    with pytest.raises(ValueError, match="one word"):
        apply_bpe("low lower", [])


def test_pair_counts_and_merge_pair_drive_the_lessons_bpe():
    corpus = {("l", "o", "w", "</w>"): 5, ("l", "o", "w", "e", "r", "</w>"): 2}
    counts = pair_counts(corpus)
    assert counts[("l", "o")] == 7 and counts[("e", "r")] == 2
    assert sum(counts.values()) == 3 * 5 + 5 * 2  # n - 1 pairs per word, weighted
    assert learn_bpe(["low low lower"], 1)[0].pair == ("l", "o")
    assert merge_pair(("a", "a", "a", "</w>"), ("a", "a")) == ("aa", "a", "</w>")
