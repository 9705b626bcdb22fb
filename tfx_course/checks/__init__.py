"""Learner-facing checks: run your code on seeded inputs and name the likely bug.

Each ``check_<exercise>`` function calls the learner's code, compares it with the library's
reference and with the mistakes people usually make, prints one line starting with
``PASS [exercise]`` or ``FAIL [exercise]``, and returns a ``CheckResult``. A check never
raises because of the learner's code: an exception, a hang (time limit), a wrong type,
shape or dtype, or NaN is reported as a failure with a sentence that says what to fix.

One module per part of the course: ``attention`` (lesson 01), ``heads`` (02), ``blocks``
(03-04), ``encoder_decoder`` (05-06), ``training`` (07), ``optimization`` (09) and
``translation`` (08, 10); ``core`` holds what they share.

Environment variables: ``TFX_COURSE_CHECK_TIMEOUT`` (seconds per call of learner code,
default 10), ``TFX_COURSE_RESULTS`` (a file the grader reads, one JSON line per check) and
``TFX_COURSE_RAISE_ON_FAIL=1`` (a failed check raises ``CheckFailed``, for nbgrader).
"""

from tfx_course.checks.attention import (
    check_attention,
    check_attention_scores,
    check_causal_mask,
    check_masked_softmax,
    check_padding_mask,
)
from tfx_course.checks.blocks import (
    check_embed_tokens,
    check_layer_norm,
    check_post_ln_residual,
    check_pre_ln_residual,
    check_sinusoidal_encoding,
)
from tfx_course.checks.core import CheckFailed, CheckResult
from tfx_course.checks.encoder_decoder import (
    check_decoder_layer,
    check_encoder_layer,
    check_feed_forward,
    check_target_mask,
)
from tfx_course.checks.heads import check_merge_heads, check_multi_head_attention, check_split_heads
from tfx_course.checks.optimization import (
    check_adamw_step,
    check_clip_grad_norm,
    check_cosine_lr,
)
from tfx_course.checks.training import (
    check_greedy_decode,
    check_label_smoothing,
    check_warmup_schedule,
)
from tfx_course.checks.translation import (
    check_beam_step,
    check_length_penalty,
    check_merge_pair,
    check_ngram_matches,
    check_pair_counts,
)

__all__ = [
    "CheckFailed",
    "CheckResult",
    "check_adamw_step",
    "check_attention",
    "check_attention_scores",
    "check_beam_step",
    "check_causal_mask",
    "check_clip_grad_norm",
    "check_cosine_lr",
    "check_decoder_layer",
    "check_embed_tokens",
    "check_encoder_layer",
    "check_feed_forward",
    "check_greedy_decode",
    "check_label_smoothing",
    "check_layer_norm",
    "check_length_penalty",
    "check_masked_softmax",
    "check_merge_heads",
    "check_merge_pair",
    "check_multi_head_attention",
    "check_ngram_matches",
    "check_padding_mask",
    "check_pair_counts",
    "check_post_ln_residual",
    "check_pre_ln_residual",
    "check_sinusoidal_encoding",
    "check_split_heads",
    "check_target_mask",
    "check_warmup_schedule",
]
