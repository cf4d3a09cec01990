"""SmolLM2-135M K-quant files scored by llama.cpp as each is made (perplexity first, then speed), kept in a directory.

The short form of ``llamacpp_smollm2.py --kquant --imatrix`` for a loaded machine: every file is written to ``--out``
and its llama.cpp perplexity printed at once, so a run cut short keeps what it measured; tokens/s at 1 and all threads
follow for every file at the end.

    .venv/bin/python benchmarks/llamacpp_kquant.py [--out runs/bench/llamacpp_kquant] [--calibration-examples 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from slimtorch.core import RunContext
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.export.gguf import gguf_hessians
from slimtorch.measure import llamacpp
from slimtorch.measure.llm import windows
from slimtorch.measure.machine import probe
from slimtorch.quantize.gptq import calibration_inputs

sys.path.insert(0, str(Path(__file__).parent))
from llamacpp_smollm2 import held_out_text, llama_quantize, scored_file, skipped_without_llamacpp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/llamacpp_kquant"))
    parser.add_argument("--calibration-examples", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if skipped_without_llamacpp("llamacpp_kquant"):
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {probe().summary()}", flush=True)
    original, data, lm, cfg, ids, spans = held_out_text("hf:smollm2", args.max_tokens, args.repeats)
    rows: dict[str, dict] = {}

    def score(label: str, path: Path) -> None:
        rows[label] = {"path": str(path), **scored_file(path, ids, spans)}
        print(f"ppl {label}: {json.dumps(rows[label])}", flush=True)

    def export(label: str, **cfg_args: object) -> Path:
        start = time.perf_counter()
        _, record = ExportStage(ExportConfig(format="gguf", min_top1_agreement=0.0, calibration_examples=args.calibration_examples,
                                             **cfg_args)).apply(copy.deepcopy(original), RunContext(data=data, work_dir=args.out / label))
        plan = record.details["size_plan"]
        print(f"export {label}: {time.perf_counter() - start:.0f} s, {record.details['tensor_types']}"
              + (f", plan {plan['tensors_by_type']}" if plan else ""), flush=True)
        return args.out / label / "00_export" / "model.gguf"

    f32 = export("f32", quant="f32")
    score("fp32 (f32 file)", f32)
    for kind in ("Q4_K_M", "Q4_0"):
        score(f"llama-quantize {kind}", llama_quantize(f32, args.out / f"{kind}.gguf", kind))
    score("slimtorch q4_k_m gptq", export("q4_k_m_gptq", quant="q4_k_m", method="gptq"))
    hessians = gguf_hessians(lm, calibration_inputs(lm, data, "train", args.calibration_examples))
    imatrix = {name: torch.diag(h) / 2 for name, h in hessians.items()}
    for kind in ("Q4_K_M", "Q4_0"):
        score(f"llama-quantize {kind} + imatrix", llama_quantize(f32, args.out / f"{kind}-imatrix.gguf", kind, imatrix))
    q4_0_mb = rows["llama-quantize Q4_0"]["mb"]
    score(f"slimtorch gptq, size_mb {q4_0_mb}", export("size_q4_0", quant="q4_0", method="gptq", size_mb=q4_0_mb))
    score("slimtorch q4_k_m rtn", export("q4_k_m_rtn", quant="q4_k_m"))
    for label, row in rows.items():
        facts = llamacpp.measure_gguf(row["path"], ids.tolist()[:300], windows(300, 256, 128), cfg, [1, 2])
        row["threads"] = facts.to_json()["threads"]
        print(f"speed {label}: {json.dumps(row['threads'])}", flush=True)
    print(json.dumps({"machine": probe().to_json(), "benchmark": "llamacpp_kquant", "files": rows}))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
