"""SmolLM2-135M at one GGUF type: rounding alone, GPTQ alone, and recovery in the file's blocks, scored by llama.cpp.

Every file has the same tensor types (so the same size); they differ in how the codes were chosen: round to nearest on
the stored grid (``rtn``), GPTQ on that grid (``method: gptq``), or token distillation from the original with every
matrix computing in its blocks, then round to nearest (``recover``, at each ``--steps``: perplexity against KD tokens).
Perplexity is llama.cpp's own on held-out text (the ``text`` test split); the recovery trains on the train split.

Variants of the recovery (``--variants``): ``full`` (every weight, from round to nearest), ``full_gptq`` (every weight,
from GPTQ's codes on a fixed grid), ``lora_through`` (LoRA adapters computed inside the rounding, merged exactly),
``lora_through_gptq`` (the same from GPTQ's codes) and ``lora_beside`` (QLoRA's way: peft's adapters beside the frozen
rounded weights, merged and re-quantized).

    .venv/bin/python benchmarks/gguf_recover.py [--quant q4_0] [--steps 64 192] [--variants full lora_through]
                                                [--out runs/bench/gguf_recover]
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
from slimtorch.export.gguf import export_gguf
from slimtorch.measure.machine import probe

sys.path.insert(0, str(Path(__file__).parent))
from llamacpp_smollm2 import held_out_text, scored_file, skipped_without_llamacpp

# --variants: export settings beside recover's, and recover's own.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "full": ({}, {}),
    "full_gptq": ({"method": "gptq"}, {}),
    "lora_through": ({}, {"lora": {"through_rounding": True}}),
    "lora_beside": ({}, {"lora": {"through_rounding": False}}),
    "lora_through_gptq": ({"method": "gptq"}, {"lora": {"through_rounding": True}}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gguf_recover"))
    parser.add_argument("--quant", default="q4_0", help="the GGUF type (or _M mix) of every file")
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 192], help="recovery optimizer steps, one file each")
    parser.add_argument("--batch", type=int, default=4, help="sequences of --seq-tokens per step")
    parser.add_argument("--seq-tokens", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--calibration-examples", type=int, default=128, help="GPTQ's calibration sentences")
    parser.add_argument("--max-tokens", type=int, default=2048, help="held-out tokens scored")
    parser.add_argument("--no-gptq", action="store_true", help="skip the GPTQ file (its calibration pass takes minutes)")
    parser.add_argument("--variants", nargs="+", default=["full"], choices=list(VARIANTS), help="recoveries to run at each --steps")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--lora-lr", type=float, default=None, help="LoRA variants' rate (default: export.recover's LoRA default)")
    args = parser.parse_args()
    if skipped_without_llamacpp("gguf_recover"):
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {probe().summary()}", flush=True)
    original, data, _, _, ids, spans = held_out_text("hf:smollm2", args.max_tokens, 1)
    rows: dict[str, dict] = {}

    def score(label: str, path: Path, seconds: float, extra: dict | None = None) -> None:
        row = scored_file(path, ids, spans)
        rows[label] = {"mb": row.pop("mb"), "bits_per_weight": row.pop("bits_per_weight"), "export_s": round(seconds, 1), **row,
                       **(extra or {})}
        print(f"{label}: {json.dumps(rows[label])}", flush=True)

    def export(label: str, **cfg_args: object) -> None:
        start = time.perf_counter()
        ctx = RunContext(data=data, work_dir=args.out / label, teacher=original)
        settings = {"format": "gguf", "quant": args.quant, "min_top1_agreement": 0.0,
                    "calibration_examples": args.calibration_examples, **cfg_args}
        _, record = ExportStage(ExportConfig(**settings)).apply(copy.deepcopy(original), ctx)
        seconds = time.perf_counter() - start
        recovery = record.details["recovery"]
        keys = ("codes_moved_at_write", "codes_moved_from_start", "heldout_kl_shipped", "rejected_kl", "lora")
        score(label, args.out / label / "00_export" / "model.gguf", seconds,
              {"kd_tokens": recovery["tokens_seen"], "heldout_kl": recovery["heldout_kl_to_teacher"],
               **{k: recovery[k] for k in keys if k in recovery}} if recovery else None)

    export("f32", quant="f32")
    export("rtn")
    # The recovery's starting point: round to nearest on slimtorch's grid (the gguf package rounds the legacy types its own way).
    start = time.perf_counter()
    (args.out / "rtn_grid").mkdir(parents=True, exist_ok=True)
    export_gguf(copy.deepcopy(original), data, args.out / "rtn_grid", args.quant, 256, recover=lambda lm, matrices, hessians, method: ({}, None))
    score("rtn_grid", args.out / "rtn_grid" / "model.gguf", time.perf_counter() - start)
    if not args.no_gptq:
        export("gptq", method="gptq")
    for variant in args.variants:
        export_args, recover_args = VARIANTS[variant]
        if "lora" in recover_args:
            recover_args = {"lora": {**recover_args["lora"], "rank": args.lora_rank, "lora_alpha": args.lora_alpha},
                            **({"lr": args.lora_lr} if args.lora_lr is not None else {})}
        else:
            recover_args = {"lr": args.lr}
        for steps in args.steps:
            label = f"recover_{steps}" if variant == "full" else f"{variant}_{steps}"
            export(label, **export_args,
                   recover={"max_steps": steps, "epochs": 1000, "patience": None, "batch_size": args.batch,
                            "tokens": {"seq_tokens": args.seq_tokens, "max_sequences": steps * args.batch}, **recover_args})
    base = rows["f32"]["perplexity"]
    for label, row in rows.items():
        row["x_fp32"] = round(row["perplexity"] / base, 4)
        print(f"{label:>12}: {row['mb']:8.2f} MB  perplexity {row['perplexity']:.3f}  x fp32 {row['x_fp32']:.4f}"
              + (f"  KD tokens {row['kd_tokens']:,}" if "kd_tokens" in row else ""))
    print(json.dumps({"machine": probe().to_json(), "benchmark": "gguf_recover", "quant": args.quant, "files": rows}))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
