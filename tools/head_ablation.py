"""Switch off the course model's attention heads, one at a time and in groups; measure BLEU.

    python tools/head_ablation.py                       # writes results/head_ablation.json
    python tools/head_ablation.py --out other.json --ranking 200 --slice 50

Every head of the course checkpoint (encoder self-attention, decoder self-attention and
cross-attention; 2 layers of 4 heads each) is zeroed with ``tfx.interpret.head_mask`` and
test2016 is translated again, greedily, and scored with sacreBLEU, on fixed subsets in file
order:

- ranking: the first 500 sentences. BLEU with every head and with each head off alone, each
  change tested against the full model by paired bootstrap (``tfx.evaluation.paired_bootstrap``).
  The heads are then ranked, least useful (removing it costs least, or helps most) first;
- pruning curves on the same sentences: the k least useful heads off together, k = 0..24, and
  for contrast the k most useful ones;
- held out: the other 500 sentences, which the ranking never saw: BLEU with every head, and
  with the least useful half off;
- slice: the first 100 sentences with every head, without the most and the least useful head,
  and without the least useful half, outputs included. Lesson 11 re-runs it live.

One torch thread, as in the lessons, so that the slice reproduces on the machine that wrote it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import tfx_course as tfx
from tfx_course.files import write_json

ROOT = Path(__file__).resolve().parents[1]
MAX_LEN = 80  # the longest output, in tokens (lesson 10's setting)


def translate(model, tokenizer, sources: list[str], heads=()) -> list[str]:
    """Return greedy translations of ``sources`` with ``heads`` switched off."""
    with tfx.interpret.mask_heads(model, heads):
        return tfx.evaluation.translate_by_length(
            model, sources, tokenizer, batch_size=100, max_len=MAX_LEN
        )


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Return cased sacreBLEU, the course's protocol."""
    return tfx.evaluation.score_bleu(hypotheses, references).score


def name(head: tuple[str, int, int]) -> str:
    """Return a head's short name: "cross 1.3" is head 3 of cross-attention layer 1."""
    kind, layer, index = head
    return f"{kind} {layer}.{index}"


def single_heads(model, tokenizer, pairs) -> tuple[dict, list[dict]]:
    """Switch off each head alone; return the baseline and one row per head."""
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    baseline = translate(model, tokenizer, sources)
    outputs = {name(h): translate(model, tokenizer, sources, [h]) for h in tfx.interpret.all_heads(model)}  # fmt: skip
    tests = tfx.evaluation.paired_bootstrap(baseline, outputs, references)
    rows = []
    for head in tfx.interpret.all_heads(model):
        test = tests[name(head)]
        changed = sum(a != b for a, b in zip(outputs[name(head)], baseline, strict=True))
        rows.append(
            {"kind": head[0], "layer": head[1], "head": head[2], "name": name(head),
             "bleu": round(test.system, 3), "change": round(test.change, 3),
             "p_value": round(test.p_value, 4), "outputs_changed": changed}
        )  # fmt: skip
    summary = {"bleu": round(bleu(baseline, references), 3), "signature": test.signature}
    return summary, rows


def pruning_curve(model, tokenizer, pairs, order: list) -> list[float]:
    """Return BLEU with the first k heads of ``order`` off, for k = 0 .. len(order)."""
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    return [
        round(bleu(translate(model, tokenizer, sources, order[:k]), references), 3)
        for k in range(len(order) + 1)
    ]


def slice_run(model, tokenizer, pairs, most, least, half) -> dict:
    """Return BLEU and outputs on the slice: all heads, without the most/least useful one, without half."""
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    runs = {
        "all heads": [],
        "most useful off": [most],
        "least useful off": [least],
        "half off": half,
    }
    result = {}
    for label, heads in runs.items():
        outputs = translate(model, tokenizer, sources, heads)
        result[label] = {"heads": [list(h) for h in heads], "bleu": round(bleu(outputs, references), 3), "outputs": outputs}  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "head_ablation.json")
    p.add_argument("--ranking", type=int, default=500, help="sentences that rank the heads")
    p.add_argument("--held-out", type=int, help="sentences after them (default: the rest)")
    p.add_argument("--slice", type=int, default=100, help="sentences the lesson re-runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tokenizer = tfx.pretrained.load_course_model()
    test = tfx.data.load_multi30k("test2016")
    ranking = test[: args.ranking]
    held_out = test[args.ranking :][: args.held_out]
    summary, rows = single_heads(model, tokenizer, ranking)
    print(f"all heads: BLEU {summary['bleu']:.2f} on test2016[:{args.ranking}]", flush=True)
    for row in rows:
        print(f"  {row['name']:<16} {row['change']:+6.2f}  p={row['p_value']:.3f}", flush=True)
    ordered = sorted(rows, key=lambda r: (-r["change"], r["name"]))  # least useful first
    order = [(r["kind"], r["layer"], r["head"]) for r in ordered]
    half = order[: len(order) // 2]
    least_first = pruning_curve(model, tokenizer, ranking, order)
    most_first = pruning_curve(model, tokenizer, ranking, order[::-1])
    held_sources, held_refs = [s for s, _ in held_out], [r for _, r in held_out]
    held = {"sentences": [args.ranking, args.ranking + len(held_out)]}
    for label, heads in (("all heads", []), ("half off", half)):
        held[label] = round(bleu(translate(model, tokenizer, held_sources, heads), held_refs), 3)
    slice_ = slice_run(model, tokenizer, test[: args.slice], order[-1], order[0], half)
    result = {
        "model": "course checkpoint (tfx_course/course_checkpoint)",
        "decoding": f"greedy, max_len {MAX_LEN}",
        "signature": summary["signature"],
        "ranking": {"sentences": [0, args.ranking], "all heads": summary["bleu"], "heads": rows},
        "order_least_useful_first": [list(h) for h in order],
        "pruning": {"least useful first": least_first, "most useful first": most_first},
        "held_out": held,
        "slice": {"sentences": [0, args.slice], "runs": slice_},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread, torch {torch.__version__}",  # fmt: skip
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, result)
    print(f"half off: {least_first[len(half)]:.2f} (ranking), {held['half off']:.2f} (held out)")
    print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
