"""Decode speed in llama.cpp of slimtorch's SmolLM2-135M Q4_K_M file against llama-quantize's, in interleaved rounds.

Both files have the same tensor types, tensor for tensor (docs/LLM.md), so they should decode at the same speed; this
measures it the way a speed claim must be made on a shared machine: the models loaded at once, one decode of each per
round, alternating, at 1 thread and at every core, and the ratio taken per round (its median and spread printed).

Where a file's bytes sit in memory moves decode speed by several per cent on its own, so the benchmark controls for it:

- before each load session every file is written back and dropped from the page cache (``posix_fadvise``), so each is
  read back the same way; a file fresh from its writer can otherwise sit in the cache in a layout that decodes slower;
- a byte-identical copy of the reference file is timed in the same rounds (the A/A ratio: the measurement's resolution);
- the files are loaded ``--loads`` times, the load order rotated each time, and the rounds of all sessions pooled.

    .venv/bin/python benchmarks/llamacpp_decode_parity.py [--ours FILE --reference FILE] [--loads 4] [--rounds 5] [--tokens 64]

Without ``--ours``/``--reference`` the files are made first: the fp32 file and slimtorch's ``q4_k_m`` with ``method: gptq``
(a few CPU-minutes), and llama-quantize's Q4_K_M from the fp32 file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from slimtorch.core import RunContext
from slimtorch.data.corpora import fortune_sentences
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.measure import llamacpp
from slimtorch.measure.machine import probe

sys.path.insert(0, str(Path(__file__).parent))
from llamacpp_smollm2 import held_out_text, llama_quantize, skipped_without_llamacpp


def _files(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    if args.ours and args.reference:
        return args.ours, args.reference
    original, data, *_ = held_out_text("hf:smollm2", 256, 1)

    def export(label: str, **settings: object) -> Path:
        ExportStage(ExportConfig(format="gguf", min_top1_agreement=0.0, **settings)).apply(
            copy.deepcopy(original), RunContext(data=data, work_dir=out / label))
        return out / label / "00_export" / "model.gguf"

    ours = export("q4_k_m_gptq", quant="q4_k_m", method="gptq")
    return ours, llama_quantize(export("f32", quant="f32"), out / "Q4_K_M.gguf", "Q4_K_M")


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "quartiles": [round(q, 4) for q in statistics.quantiles(values, n=4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, help="slimtorch's Q4_K_M file")
    parser.add_argument("--reference", type=Path, help="llama-quantize's Q4_K_M file of the same model")
    parser.add_argument("--loads", type=int, default=4, help="load sessions, the load order rotated each time")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per load session")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens decoded per round, after a 128-token prompt")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/llamacpp_decode_parity"))
    args = parser.parse_args()
    if skipped_without_llamacpp("llamacpp_decode_parity"):
        return
    print(f"machine: {probe().summary()}", flush=True)
    ours, reference = _files(args, args.out)
    files = {"slimtorch": ours, "llama-quantize": reference, "llama-quantize copy": args.out / "reference_copy.gguf"}
    files["llama-quantize copy"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference, files["llama-quantize copy"])
    # A real English prompt: a model's activations (and so its float work) depend on the text, garbage ids can mislead.
    text = " ".join(fortune_sentences()[:40]).encode()
    results: dict[str, dict] = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        decode: dict[str, list[float]] = {name: [] for name in files}
        for load in range(args.loads):
            names = list(files)[load % len(files):] + list(files)[: load % len(files)]  # who is loaded first rotates
            for name in names:
                llamacpp.drop_from_page_cache(files[name])
            models = {name: llamacpp._llama(files[name], 512, threads) for name in names}
            prompt = models["slimtorch"].tokenize(text, add_bos=False)[:128]
            for llm in models.values():  # warm-up
                llamacpp.speed(llm, prompt, 8, 1)
            for i in range(args.rounds):
                for name in names if i % 2 == 0 else list(reversed(names)):  # neither always goes first
                    decode[name].append(llamacpp.speed(models[name], prompt, args.tokens, 1).decode_tokens_per_s)
            del models
        ratio = {name: [a / b for a, b in zip(decode[name], decode["llama-quantize"])] for name in ("slimtorch", "llama-quantize copy")}
        results[str(threads)] = {
            "decode_tokens_per_s": {name: round(statistics.median(v), 2) for name, v in decode.items()},
            "slimtorch_over_llama_quantize": spread(ratio["slimtorch"]),
            "copy_over_llama_quantize (A/A)": spread(ratio["llama-quantize copy"]),
            "rounds": args.loads * args.rounds,
        }
        print(f"{threads} thread(s): {json.dumps(results[str(threads)])}", flush=True)
    print(json.dumps({"machine": probe().to_json(), "benchmark": "llamacpp_decode_parity", "ours": str(ours),
                      "reference": str(reference), "tokens": args.tokens, "threads": results}))


if __name__ == "__main__":
    main()
