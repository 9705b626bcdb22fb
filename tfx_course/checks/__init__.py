"""Learner-facing checks: run your code on seeded inputs and name the likely bug.

Each ``check_<exercise>`` function calls the learner's code, compares it with the library's
reference and with the mistakes people usually make, prints one line starting with
``PASS [exercise]`` or ``FAIL [exercise]``, and returns a ``CheckResult``. A check never
raises because of the learner's code: an exception, a hang (time limit), a wrong type,
shape or dtype, or NaN is reported as a failure with a sentence that says what to fix.

One module per lesson topic, so a check is found where its lesson is: ``self_attention``
(lesson 01), ``multi_head_attention`` (02), ``positional_encoding`` (03),
``residual_and_layernorm`` (04), ``encoder`` (05), ``decoder`` (06), ``tokenization`` (08),
``training`` (label smoothing, clipping, AdamW, EMA: 09), ``schedules`` (the warmup and cosine
learning rates: 09), ``decoding`` (greedy, sampling, length penalty, beam step, top-p: 07 and 10),
``evaluation`` (BLEU's n-gram matches: 10), ``interpretability`` (a switched-off head,
attention rollout, integrated gradients: 11), ``efficiency`` (blockwise attention, gradient
accumulation, a streaming batcher: 12), ``rnn_vs_transformer`` (the LSTM decoder's attention
step, the path-length measurement: 13), ``tuning`` (the learning-rate range test, an
overfitting detector, nested subsets: 14), ``deployment`` (int8 quantize and dequantize, a
batching queue, a parity measure: 15) and ``modern`` (RoPE, RMSNorm, the sliding-window mask:
16); ``core`` holds what they share.

Environment variables: ``TFX_COURSE_CHECK_TIMEOUT`` (seconds per call of learner code,
default 10), ``TFX_COURSE_RESULTS`` (a file the grader reads, one JSON line per check) and
``TFX_COURSE_RAISE_ON_FAIL=1`` (a failed check raises ``CheckFailed``, for nbgrader).
"""

from tfx_course.checks.core import CheckFailed, CheckResult
from tfx_course.checks.decoder import (
    check_cross_attention_cache,
    check_decoder_layer,
    check_target_mask,
)
from tfx_course.checks.decoding import (
    check_beam_step,
    check_greedy_decode,
    check_length_penalty,
    check_sample_decode,
    check_top_p_filter,
)
from tfx_course.checks.deployment import (
    check_int8_quantize,
    check_max_difference,
    check_take_batch,
)
from tfx_course.checks.efficiency import (
    check_accumulation_step,
    check_blockwise_attention,
    check_stream_batches,
)
from tfx_course.checks.encoder import (
    check_encoder_layer,
    check_feed_forward,
    check_parallel_block,
)
from tfx_course.checks.evaluation import check_ngram_matches
from tfx_course.checks.interpretability import (
    check_attention_rollout,
    check_integrated_gradients,
    check_mask_head,
)
from tfx_course.checks.modern import check_apply_rope, check_rms_norm, check_sliding_window_mask
from tfx_course.checks.multi_head_attention import (
    check_merge_heads,
    check_multi_head_attention,
    check_multi_query_attention,
    check_split_heads,
)
from tfx_course.checks.positional_encoding import (
    check_alibi_bias,
    check_embed_tokens,
    check_sinusoidal_encoding,
)
from tfx_course.checks.residual_and_layernorm import (
    check_layer_norm,
    check_post_ln_residual,
    check_pre_ln_residual,
    check_rezero_residual,
)
from tfx_course.checks.rnn_vs_transformer import check_gradient_reach, check_rnn_attention_step
from tfx_course.checks.schedules import check_cosine_lr, check_warmup_schedule
from tfx_course.checks.self_attention import (
    check_attention,
    check_attention_scores,
    check_causal_mask,
    check_masked_softmax,
    check_padding_mask,
)
from tfx_course.checks.tokenization import (
    check_byte_fallback,
    check_merge_pair,
    check_pair_counts,
)
from tfx_course.checks.training import (
    check_adamw_step,
    check_clip_grad_norm,
    check_ema_update,
    check_label_smoothing,
)
from tfx_course.checks.tuning import (
    check_lr_range_test,
    check_nested_subsets,
    check_overfitting_step,
)

__all__ = [
    "CheckFailed",
    "CheckResult",
    "check_accumulation_step",
    "check_adamw_step",
    "check_alibi_bias",
    "check_apply_rope",
    "check_attention",
    "check_attention_rollout",
    "check_attention_scores",
    "check_beam_step",
    "check_blockwise_attention",
    "check_byte_fallback",
    "check_causal_mask",
    "check_clip_grad_norm",
    "check_cosine_lr",
    "check_cross_attention_cache",
    "check_decoder_layer",
    "check_ema_update",
    "check_embed_tokens",
    "check_encoder_layer",
    "check_feed_forward",
    "check_gradient_reach",
    "check_greedy_decode",
    "check_int8_quantize",
    "check_integrated_gradients",
    "check_label_smoothing",
    "check_layer_norm",
    "check_length_penalty",
    "check_lr_range_test",
    "check_mask_head",
    "check_masked_softmax",
    "check_max_difference",
    "check_merge_heads",
    "check_merge_pair",
    "check_multi_head_attention",
    "check_multi_query_attention",
    "check_nested_subsets",
    "check_ngram_matches",
    "check_overfitting_step",
    "check_padding_mask",
    "check_pair_counts",
    "check_parallel_block",
    "check_post_ln_residual",
    "check_pre_ln_residual",
    "check_rezero_residual",
    "check_rms_norm",
    "check_rnn_attention_step",
    "check_sample_decode",
    "check_sinusoidal_encoding",
    "check_sliding_window_mask",
    "check_split_heads",
    "check_stream_batches",
    "check_take_batch",
    "check_target_mask",
    "check_top_p_filter",
    "check_warmup_schedule",
]
