"""report.md: one row per model with ratios against the baseline, the stages, and every warning."""

from __future__ import annotations

import html
from collections.abc import Sequence

from slimtorch.measure.measurement import LLMFacts, Measurement
from slimtorch.report.card import Report
from slimtorch.report.energy import energy_lines
from slimtorch.report.table import (
    Cell,
    batches,
    compare,
    fmt_bytes,
    fmt_count,
    fmt_delta,
    fmt_metric,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    p50,
    with_ratio,
)


def _text(value: object) -> str:
    """Names, notes and samples come from the user: raw HTML in them is shown as text, never rendered by a Markdown viewer."""
    return html.escape(str(value), quote=False)


def _row(cells: Sequence[Cell | str]) -> str:
    texts = (c.plain() if isinstance(c, Cell) else c for c in cells)
    return "| " + " | ".join(_text(c).replace("|", "\\|").replace("\n", " ") for c in texts) + " |"


def _table(header: list[str], rows: Sequence[Sequence[Cell | str]]) -> list[str]:
    return [_row(header), _row([":--" if h in TEXT_COLUMNS else "--:" for h in header]), *map(_row, rows)]


TEXT_COLUMNS = {"model", "stage", "runtime", "status", "notes", "continuation"}


def _noise_keys(report: Report) -> list[str]:
    return sorted({k for m in report.models for k in m.robustness}, key=_noise_level)


def summary_header(report: Report) -> list[str]:
    rows = compare(report.models, report.baseline, report.final)
    metric = rows[0].metric_name if rows else "accuracy"
    return ["model", "stage", "runtime", "params", "nonzero", "size", "zlib size", "MACs/example",
            *[f"p50 ms b{b}" for b in batches(report.models)], metric, "Δ pts", "agreement",
            *[k.replace("_", " ") for k in _noise_keys(report)]]


def summary_rows(report: Report) -> list[list[Cell]]:
    """The typed cells of the summary table, which report.md and the HTML card both draw."""
    noise = _noise_keys(report)
    out = []
    for r in compare(report.models, report.baseline, report.final):
        m, is_base = r.model, r.is_baseline
        tag = " (baseline)" if is_base else " (final)" if r.is_final else ""
        out.append([
            Cell(f"{m.name}{tag}"), Cell(m.stage), Cell(m.runtime),
            with_ratio(fmt_count(m.params), r.params_x, is_base),
            Cell(fmt_count(m.nonzero_params), fmt_pct(m.nonzero_params / m.params if m.params else None)),
            with_ratio(fmt_bytes(m.size_bytes), r.size_x, is_base),
            with_ratio(fmt_bytes(m.compressed_bytes), r.compressed_x, is_base),
            with_ratio(fmt_count(m.macs), r.macs_x, is_base),
            *[Cell(fmt_ms(p50(m, b)), "≈") if r.same_speed[b] else with_ratio(fmt_ms(p50(m, b)), r.speedup[b], is_base)
              for b in batches(report.models)],
            Cell(fmt_metric(r.metric_name, r.metric)),
            Cell("—" if is_base else fmt_delta(r.delta_points)),
            Cell(fmt_pct(m.agreement) if r.metric_name == "accuracy" else (f"{m.agreement:.4f}" if m.agreement is not None else "—")),
            *[Cell(fmt_metric(r.metric_name, m.robustness.get(k))) for k in noise],
        ])
    return out


def latency_rows(report: Report) -> list[list[str]]:
    """Per model and batch: where it ran, p50, p90, spread, mean ± std, repeats, threads."""
    out = []
    for m in report.models:
        for b in batches(report.models):
            t = m.latency_ms.get(b)
            if t is None:
                continue
            spread = t.p90 / t.p50 if t.p50 else None
            out.append([m.name, f"{m.runtime} on {m.device}", str(m.threads), b, fmt_ms(t.p50), fmt_ms(t.p90),
                        fmt_ratio(spread), f"{fmt_ms(t.mean)} ± {fmt_ms(t.std)}", "" if t.repeats is None else str(t.repeats)])
    return out


LATENCY_HEADER = ["model", "runtime on device", "threads", "batch", "p50 ms", "p90 ms", "p90/p50", "mean ± std ms", "repeats"]
STAGE_HEADER = ["stage", "model", "status", "seconds", "notes"]


def stage_rows(report: Report) -> list[list[str]]:
    return [[s.name, s.model or "", s.status, f"{s.seconds:.1f}", "; ".join(s.notes)] for s in report.stages]


def all_warnings(report: Report) -> list[str]:
    return [*report.warnings, *report.hardware_warnings]


def machine_summary(report: Report) -> str | None:
    """The CPU, its instruction sets and cores every figure was measured on (report.json's ``machine``), if recorded."""
    machine = report.extra.get("machine")
    summary = machine.get("summary") if isinstance(machine, dict) else None
    return str(summary) if summary else None


def machine_line(report: Report) -> list[str]:
    summary = machine_summary(report)
    return ["", f"Measured on: {html.escape(summary)}."] if summary else []


def render_markdown(report: Report) -> str:
    """The report card as Markdown: summary with ratios, latency detail, stages, warnings and notes."""
    name = report.recipe.get("name", "")
    lines = [f"# slimtorch report{': ' + _text(name) if name else ''}", "",
             (f"Baseline **{_text(report.baseline)}**, final **{_text(report.final)}**; slimtorch {_text(report.slimtorch_version)}"
             f"{', ' + _text(report.created) if report.created else ''}."), *machine_line(report), "", "## Models", ""]
    lines += _table(summary_header(report), summary_rows(report))
    lines += ["", ("Ratios in brackets are against the baseline: params, size and MACs are *times fewer*, latency is "
              "*speedup* (baseline p50 ÷ model p50); (≈) marks a latency inside the baseline's p10–p90 spread, which is no "
              "measurable difference. Δ pts is the metric change in percentage points. MACs are per "
              "example (batch 1). Robustness columns are the metric under Gaussian input noise of std level × input std."), ""]
    lines += ["## Latency", ""] + _table(LATENCY_HEADER, latency_rows(report))
    lines += llm_lines(report)
    lines += energy_lines(report)
    if report.stages:
        lines += ["", "## Stages", ""] + _table(STAGE_HEADER, stage_rows(report))
    warnings = all_warnings(report)
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {_text(w)}" for w in warnings]
    notes = [(m.name, n) for m in report.models for n in m.notes]
    if notes:
        lines += ["", "## Measurement notes", ""] + [f"- **{_text(who)}**: {_text(n)}" for who, n in notes]
    return "\n".join(lines) + "\n"


def llm_lines(report: Report) -> list[str]:
    """Causal LMs: perplexity, agreement, KL and speed per model, then greedy samples, baseline beside each model."""
    lms = [m for m in report.models if m.decode_tokens_per_s]
    if not lms:
        return []
    facts = {m.name: m.llm or LLMFacts() for m in lms}
    decode = sorted({b for m in lms for b in m.decode_tokens_per_s}, key=int)
    base = next((m for m in lms if m.name == report.baseline), lms[0])
    compiled = any(f.setup.decode == "compiled" for f in facts.values())
    rows = [[m.name, f"{m.metrics['perplexity']:.3f}",
             f"{m.metrics['perplexity'] / base.metrics['perplexity']:.3f}×",
             fmt_pct(m.metrics.get("token_agreement")), _fmt_kl(m.metrics.get("kl_to_original")),
             fmt_ms(prefill.p50 if (prefill := facts[m.name].prefill_ms) else None),
             *[f"{m.decode_tokens_per_s.get(b, float('nan')):.2f}" for b in decode],
             *[f"{(facts[m.name].decode_eager_tokens_per_s or {}).get(b, float('nan')):.2f}" for b in decode if compiled]]
            for m in lms]
    setup = facts[base.name].setup
    kind = "compiled" if compiled else "eager"
    how = ("the decode step compiled by torch.compile (inductor) with a static KV cache, first call (compiling) excluded; "
           f"eager columns: the same models without compiling; compile s per batch size: {', '.join(_compile_s(m.name, facts[m.name]) for m in lms)}"
           if compiled else "eager PyTorch")
    lines = ["", "## Language model", "",
             *_table(["model", "perplexity", "vs baseline", "top-1 agreement", "KL nats", "prefill ms b1",
                      *[f"decode tok/s b{b} ({kind})" for b in decode], *[f"eager tok/s b{b}" for b in decode if compiled]], rows),
             "", (f"Perplexity over {_known(setup.scored_tokens)} tokens of the {setup.split} split in windows of "
                  f"{_known(setup.window)} tokens every {_known(setup.stride)}; agreement and KL against the baseline's "
                  f"next-token distribution; prefill of {_known(setup.prefill_tokens)} tokens; decode = greedy with the KV "
                  f"cache, {_known(setup.decode_new_tokens)} new tokens, {how}."), *llamacpp_lines(lms, facts), "",
             "### Greedy samples", ""]
    for prompt in facts[base.name].samples:
        lines += [f"**{prompt}**", "", *_table(["model", "continuation"], [
            [m.name, facts[m.name].samples.get(prompt, "—")] for m in [base, *[x for x in lms if x is not base]]]), ""]
    return lines


def llamacpp_lines(lms: list[Measurement], facts: dict[str, LLMFacts]) -> list[str]:
    """GGUF models as llama.cpp runs them: its perplexity beside torch's on the same tokens, and its tokens/s per thread count."""
    runs = [(m, cpp) for m in lms if (cpp := facts[m.name].llamacpp) is not None]
    if not runs:
        return []
    skipped = [f"{m.name}: {cpp.skipped}" for m, cpp in runs if cpp.skipped is not None]
    measured = [(m, cpp, cpp.threads) for m, cpp in runs if cpp.threads]
    lines = ["", "### In llama.cpp", ""]
    if measured:
        counts = sorted({t for _, _, speeds in measured for t in speeds}, key=int)
        rows = [[m.name, f"{cpp.perplexity:.3f}" if cpp.perplexity is not None else "—", f"{m.metrics['perplexity']:.3f}",
                 *[f"{speeds[t].prefill_tokens_per_s:.1f} / {speeds[t].decode_tokens_per_s:.1f}"
                   if t in speeds else "—" for t in counts]] for m, cpp, speeds in measured]
        lines += _table(["model", "perplexity (llama.cpp)", "perplexity (torch)",
                         *[f"prefill / decode tok/s, {t} thread{'s' if t != '1' else ''}" for t in counts]], rows)
        first = measured[0][1]
        lines += ["", (f"The GGUF file run by llama-cpp-python {first.llama_cpp or '?'} on the same token ids and windows; prefill of "
                      f"{first.prefill_tokens} tokens, then {first.decode_new_tokens} greedy tokens with its KV cache.")]
    if skipped:
        lines += ["", *[f"- {line}" for line in skipped]]
    return lines


def _known(value: object) -> str:
    return "?" if value is None else str(value)


def _compile_s(name: str, facts: LLMFacts) -> str:
    """``name 34/61 s``: seconds of each batch size's first compiled call (compiling included)."""
    seconds = facts.compile_s
    return f"{name} {'/'.join(f'{v:.0f}' for v in seconds.values())} s" if seconds else f"{name} —"


def _fmt_kl(kl: float | None) -> str:
    return "—" if kl is None else f"{kl:.4f}"


def _noise_level(key: str) -> float:
    try:
        return float(key.rsplit("_", 1)[-1])
    except ValueError:
        return float("inf")
