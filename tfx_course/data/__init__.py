"""Data for the course: tokenizers, synthetic tasks, Multi30k and Tatoeba (download, checksum,
cache), subsets, batching."""

from tfx_course.data import (
    batching,
    bpe,
    bucketing,
    download,
    multi30k,
    subsets,
    subword,
    synthetic,
    tatoeba,
    tokenizers,
)
from tfx_course.data.batching import Seq2SeqBatch, make_batch, make_batches, pad_sequences
from tfx_course.data.bucketing import (
    PaddingStats,
    bucket_lengths,
    fixed_shape_batches,
    make_fixed_shape_batches,
    make_token_batches,
    padding_stats,
    token_batches,
)
from tfx_course.data.multi30k import (
    MULTI30K_FILES,
    ChecksumError,
    DownloadError,
    MissingDataError,
    Multi30kError,
    data_home,
    download_multi30k,
    load_multi30k,
    multi30k_status,
)
from tfx_course.data.subsets import nested_subsets
from tfx_course.data.subword import SubwordTokenizer, train_subword_tokenizer
from tfx_course.data.synthetic import TASKS, make_pairs, tokenizer_for
from tfx_course.data.tatoeba import (
    ATTRIBUTION,
    TATOEBA_SPLITS,
    download_tatoeba,
    load_tatoeba,
    tatoeba_status,
)
from tfx_course.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharTokenizer, Tokenizer

__all__ = ["MULTI30K_FILES", "data_home", "multi30k_status"]
__all__ += [
    "bpe",
    "bucketing",
    "multi30k",
    "subword",
    "ChecksumError",
    "DownloadError",
    "MissingDataError",
    "Multi30kError",
    "PaddingStats",
    "SubwordTokenizer",
    "bucket_lengths",
    "download_multi30k",
    "fixed_shape_batches",
    "load_multi30k",
    "make_fixed_shape_batches",
    "make_token_batches",
    "padding_stats",
    "token_batches",
    "train_subword_tokenizer",
]
__all__ += [
    "download",
    "subsets",
    "tatoeba",
    "ATTRIBUTION",
    "TATOEBA_SPLITS",
    "download_tatoeba",
    "load_tatoeba",
    "nested_subsets",
    "tatoeba_status",
]
__all__ += [
    "batching",
    "synthetic",
    "tokenizers",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "TASKS",
    "CharTokenizer",
    "Seq2SeqBatch",
    "Tokenizer",
    "make_batch",
    "make_batches",
    "make_pairs",
    "pad_sequences",
    "tokenizer_for",
]
