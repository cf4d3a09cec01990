"""all-MiniLM-L6-v2 on CPU: torch fp32 vs onnxruntime fp32 / int8 vs torch dynamic int8, in one run.

For each variant: latency (p50, fixed thread count) at batch 1 and at 8 x 128 tokens, artifact size,
and cosine of the sentence embeddings to torch fp32 on held-out sentences (ratios are vs torch fp32
measured in this run). Then a mnist1d CNN's accuracy before and after static int8 (and dynamic int8).

    .venv/bin/python benchmarks/quantize_minilm.py [--threads 1] [--repeats 30]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.nn import functional as F

from slimtorch import artifact
from slimtorch.core import RunContext, forward
from slimtorch.data import build_data
from slimtorch.data import text as _text_source  # noqa: F401  (registers the "text" data source)
from slimtorch.export import to_ort
from slimtorch.measure.accuracy import task_metric
from slimtorch.measure.latency import time_latency
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.train import TrainConfig, fit

# Held-out English sentences (written for this benchmark; not from any training corpus).
SENTENCES = [
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Interest rates rose again this quarter, surprising several analysts.",
    "She planted tomatoes, basil and peppers in the small garden behind the house.",
    "The train to the coast was delayed by almost an hour because of the storm.",
    "Regular exercise improves sleep quality and reduces stress.",
    "He forgot his umbrella and got soaked on the way to work.",
    "The museum's new exhibition features paintings from the early Renaissance.",
    "Compilers translate high-level source code into machine instructions.",
    "Our team won the regional football championship last weekend.",
    "A balanced breakfast usually includes protein, fruit and whole grains.",
    "The river flooded the valley after three days of heavy rain.",
    "Please remember to submit your expense reports by Friday.",
    "Astronomers discovered a planet orbiting a distant red dwarf star.",
    "The bakery on the corner sells the best sourdough bread in town.",
    "Learning a second language takes patience and daily practice.",
    "The software update fixed the bug that crashed the application at startup.",
    "Children were playing in the park while their parents chatted on the benches.",
    "The concert was cancelled because the lead singer had a sore throat.",
    "Electric cars are becoming cheaper as battery prices fall.",
    "He read the novel in a single night and could not stop thinking about it.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Volcanic eruptions can affect the global climate for several years.",
    "The committee postponed its decision until the next meeting.",
    "My grandmother tells wonderful stories about growing up on a farm.",
    "The hikers reached the summit just before sunrise.",
    "Database indexes speed up queries at the cost of slower writes.",
    "The price of coffee has doubled over the past two years.",
    "She adopted a shy grey kitten from the local shelter.",
    "The old bridge will be closed for repairs throughout the summer.",
    "Good documentation makes a library much easier to use.",
    "Thunder rolled across the hills as the first drops began to fall.",
    "The students presented their science projects to the whole school.",
    "Fresh snow covered the mountain village overnight.",
    "The doctor recommended rest and plenty of fluids.",
    "A new species of frog was found in the rainforest canopy.",
    "The airline lost my suitcase on the return flight.",
    "Neural networks can be compressed by pruning and quantization.",
    "They watched the fireworks from the roof of their apartment building.",
    "The library extended its opening hours during the exam period.",
    "Wind turbines generated a record share of the country's electricity last month.",
]


def artifact_bytes(model: torch.nn.Module, directory: Path) -> int:
    artifact.save(model, directory)
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def minilm_rows(args: argparse.Namespace, tmp: Path) -> list[dict]:
    corpus = tmp / "sentences.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    data = build_data("text", args={"corpus": "file", "path": str(corpus), "max_length": 128, "max_sentences": None,
                                    "val_fraction": 0.25, "test_fraction": 0.25})
    ctx = RunContext(data=data, work_dir=tmp / "work", task="embedding")
    fp32 = build_model("hf:minilm").eval()
    held_out = fp32.tokenize(SENTENCES, max_length=128)
    batch1 = fp32.tokenize(SENTENCES[:1], max_length=128)
    enc = fp32.tokenizer(SENTENCES[:8], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    batch8 = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}  # (8, 128)
    with torch.no_grad():
        reference = fp32(**held_out)
    variants = [("torch fp32", fp32, "torch fp32")]
    variants.append(("onnxruntime fp32", to_ort(fp32, batch1), "onnxruntime fp32"))
    for label, cfg in [
        ("onnxruntime int8 (4-bit emb.)", QuantizeConfig(mode="dynamic_int8", embedding_bits=4)),
        ("onnxruntime int8", QuantizeConfig(mode="dynamic_int8")),
        ("torch dynamic int8", QuantizeConfig(mode="dynamic_int8", runtime="torch")),
    ]:
        model, record = QuantizeStage(cfg).apply(fp32, ctx)
        variants.append((label, model, record.details["backend"]))
    rows = []
    for i, (label, model, backend) in enumerate(variants):
        with torch.no_grad():
            cos = F.cosine_similarity(forward(model, held_out).float(), reference, dim=-1)
        lat1 = time_latency(model, batch1, warmup=10, repeats=args.repeats, threads=args.threads)
        lat8 = time_latency(model, batch8, warmup=3, repeats=max(5, args.repeats // 3), threads=args.threads)
        rows.append({"variant": label, "backend": backend, "bytes": artifact_bytes(model, tmp / f"m{i}"),
                     "cosine_mean": round(cos.mean().item(), 5), "cosine_min": round(cos.min().item(), 5),
                     "b1_ms": lat1.p50, "b8x128_ms": lat8.p50})
    base = rows[0]
    for row in rows:
        row["size_ratio"] = round(row["bytes"] / base["bytes"], 4)
        row["b1_latency_ratio"] = round(row["b1_ms"] / base["b1_ms"], 3)
        row["b8x128_latency_ratio"] = round(row["b8x128_ms"] / base["b8x128_ms"], 3)
    return rows


def mnist1d_rows(tmp: Path) -> dict:
    torch.manual_seed(0)
    data = build_data("mnist1d", seed=0, batch_size=64)
    ctx = RunContext(data=data, work_dir=tmp / "cnn")
    model = build_model("cnn", {"channels": [32, 64, 64, 64], "hidden": 128}, input_shape=data.input_shape, num_classes=10)
    fit(model, lambda m, x, y: F.cross_entropy(m(x), y), data.loader("train", shuffle=True), TrainConfig(epochs=8, lr=3e-3), ctx)
    out = {"model": "cnn [32,64,64,64] on mnist1d", "fp32_accuracy": round(task_metric(model, data, "test"), 4)}
    for key, cfg in [("static_int8", QuantizeConfig(mode="static_int8", calibration_batches=8)),
                     ("dynamic_int8", QuantizeConfig(mode="dynamic_int8"))]:
        quantized, record = QuantizeStage(cfg).apply(model, ctx)
        out[f"{key}_accuracy"] = round(task_metric(quantized, data, "test"), 4)
        out[f"{key}_backend"] = record.details["backend"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="slimtorch-bench-") as name:
        tmp = Path(name)
        rows = minilm_rows(args, tmp)
        cnn = mnist1d_rows(tmp)
    print(f"all-MiniLM-L6-v2, {len(SENTENCES)} held-out sentences, {args.threads} thread(s); ratios vs torch fp32 (this run)")
    header = f"{'variant':32} {'size MB':>8} {'size x':>7} {'b1 ms':>8} {'b1 x':>6} {'8x128 ms':>9} {'8x128 x':>8} {'cos mean':>9} {'cos min':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:32} {r['bytes'] / 1e6:8.2f} {r['size_ratio']:7.3f} {r['b1_ms']:8.2f} {r['b1_latency_ratio']:6.2f} "
              f"{r['b8x128_ms']:9.2f} {r['b8x128_latency_ratio']:8.2f} {r['cosine_mean']:9.4f} {r['cosine_min']:8.4f}")
    for r in rows:
        print(f"  {r['variant']}: {r['backend']}")
    print(f"\n{cnn['model']}: fp32 {cnn['fp32_accuracy']:.4f}, static int8 {cnn['static_int8_accuracy']:.4f} "
          f"({cnn['static_int8_backend']}), dynamic int8 {cnn['dynamic_int8_accuracy']:.4f}")
    print(json.dumps({"machine": probe().to_json(), "threads": args.threads, "minilm": rows, "mnist1d": cnn}))


if __name__ == "__main__":
    main()
