"""Sweeps: run variants of one recipe over a grid of settings and compare their final models.

``--grid distill.temperature=1,2,4 --grid prune.sparsity=0.3,0.5`` runs the 3 × 2 variants, each in
``OUT/variants/<slug>/`` (resumable: finished variants are reused), then writes one comparison
report whose models are the variants' final models, with the Pareto plot marking the frontier.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slimtorch import artifact
from slimtorch.core import StageRecord
from slimtorch.data import build_data
from slimtorch.distributed import launched_by_torchrun
from slimtorch.errors import RecipeError
from slimtorch.io import atomic_write_json, read_json
from slimtorch.logs import quiet_library_logs
from slimtorch.measure import Measurement
from slimtorch.measure.runner import retime_side_by_side
from slimtorch.outdir import claim_out_dir
from slimtorch.recipe import load_recipe
from slimtorch.report import load_report, write_report
from slimtorch.report.card import Report
from slimtorch.run.pipeline import compress
from slimtorch.run.resume import fingerprint
from slimtorch.run.store import trusted_calls
from slimtorch.track.config import TrackingConfig
from slimtorch.track.log_run import track_sweep


@dataclass(frozen=True)
class GridAxis:
    """One ``path=v1,v2,...`` axis. ``path`` is ``<stage kind>.<field>``, ``stages[i].<field>`` or a top-level dotted key."""

    path: str
    values: tuple[Any, ...]


def parse_grid(spec: str) -> GridAxis:
    """Parse ``distill.temperature=1,2,4`` (values are read as YAML scalars)."""
    path, sep, raw = spec.partition("=")
    if not sep or not path or not raw:
        raise RecipeError(f"--grid {spec!r} must look like 'stage.field=v1,v2' (e.g. distill.temperature=1,2,4).")
    values = tuple(yaml.safe_load(v) for v in raw.split(","))
    return GridAxis(path.strip(), values)


def _set(recipe: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in a recipe dict; a first part naming a stage kind addresses the first such stage."""
    parts = path.split(".")
    head = parts[0]
    match = re.fullmatch(r"stages\[(\d+)\]", head)
    stages = recipe.get("stages") or []
    if match:
        index = int(match.group(1))
        if index >= len(stages):
            raise RecipeError(f"--grid {path!r}: the recipe has {len(stages)} stages; index {index} does not exist.")
        target = next(iter(stages[index].values()))
    elif any(head in s for s in stages):
        entry = next(s for s in stages if head in s)
        if entry[head] is None:
            entry[head] = {}
        target = entry[head]
    elif head in recipe or head in ("seed", "evaluate", "student"):
        target = recipe
    else:
        kinds = sorted({k for s in stages for k in s})
        raise RecipeError(f"--grid {path!r}: {head!r} is neither a stage of this recipe ({', '.join(kinds) or 'none'}) nor a top-level key.")
    keys = parts[1:] if target is not recipe else parts
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _slug(assignment: dict[str, Any]) -> str:
    text = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in assignment.items())
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


# A sweep runs each variant to the end; a grid this large is a typo (or a hostile file), not a plan.
MAX_VARIANTS = 1000
VARIANT_FILE = "sweep_variant.json"  # in each variant's folder: the fingerprint of the recipe it ran


def variants(recipe: dict[str, Any], axes: list[GridAxis]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """All ``(slug, assignment, recipe dict)`` variants of the grid, validated before any runs.

    Raises:
        RecipeError: the grid has more than :data:`MAX_VARIANTS` variants (counted before any is built), or a
            variant is invalid.
    """
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_VARIANTS:
        sizes = " × ".join(f"{len(a.values)} ({a.path})" for a in axes)
        raise RecipeError(f"the sweep grid has {count:,} variants ({sizes}), over the limit of {MAX_VARIANTS:,}; "
                          "each variant is a whole run. Use fewer values per --grid axis.")
    out = []
    for combo in itertools.product(*(a.values for a in axes)):
        assignment = {a.path: v for a, v in zip(axes, combo)}
        variant = copy.deepcopy(recipe)
        for path, value in assignment.items():
            _set(variant, path, value)
        slug = _slug(assignment)
        variant["name"] = f"{recipe.get('name', 'run')}-{slug}"
        load_recipe(variant)  # fail early, before hours of runs, if a value is invalid
        out.append((slug, assignment, variant))
    return out


def sweep(
    recipe: str | Path | dict[str, Any],
    grid: list[str],
    out: str | Path,
    *,
    resume: bool = True,
    progress: Callable[..., Any] | None = None,
    events: Callable[[str], None] | None = None,
    device: str | None = None,
) -> Report:
    """Run every variant (reusing finished ones) and write ``OUT/report.*`` comparing their final models."""
    if launched_by_torchrun():
        raise RecipeError("slimtorch sweep runs in one process; under torchrun, run each variant with `slimtorch compress` instead.")
    if not grid:
        raise RecipeError("a sweep needs at least one --grid axis, e.g. --grid prune.sparsity=0.3,0.5,0.7.")
    base = load_recipe(recipe).to_dict()
    tracking = base.pop("tracking", None)  # the sweep logs each variant as a child of its own run
    axes = [parse_grid(g) for g in grid]
    runs = variants(base, axes)
    out = Path(out)
    with claim_out_dir(out, resume=resume, force=False, kind="sweep"), quiet_library_logs():
        say = events or (lambda msg: None)
        card = _sweep(base, axes, runs, out, resume, progress, say, device)
        track_sweep(TrackingConfig.model_validate(tracking) if tracking else None, out, card,
                    [(slug, out / "variants" / slug) for slug, _, _ in runs], say)
        return card


def _retime(base: dict[str, Any], models: list[Measurement], dirs: list[Path]) -> None:
    """Variants finish minutes apart; time their final models (and the baseline) together so ratios compare models."""
    recipe = load_recipe(base)
    if any(m.llm is not None for m in models):
        return  # causal LMs are timed by their own decode measurements
    d = recipe.data
    data = build_data(d.source, args=d.args, seed=recipe.seed, batch_size=d.batch_size, labeled_fraction=d.labeled_fraction,
                      transfer=d.transfer, num_classes=d.num_classes)
    refs = trusted_calls(base)
    retime_side_by_side([(m, artifact.load(p, trusted_refs=refs)) for m, p in zip(models, dirs)], data, recipe.evaluate)


def _sweep(base: dict[str, Any], axes: list[Any], runs: list[tuple[str, dict[str, Any], dict[str, Any]]], out: Path, resume: bool,
           progress: Callable[..., Any] | None, events: Callable[[str], None], device: str | None = None) -> Report:
    finals: list[Measurement] = []
    dirs: list[Path] = []
    rows: list[StageRecord] = []
    for i, (slug, assignment, variant) in enumerate(runs):
        run_dir = out / "variants" / slug
        variant_fp = fingerprint(variant)
        if resume and (run_dir / "report.json").exists() and _variant_fingerprint(run_dir) == variant_fp:
            events(f"variant {i + 1}/{len(runs)} {slug}: finished earlier, reusing")
            report = Report.from_json(load_report(run_dir / "report.json"))
        else:
            events(f"variant {i + 1}/{len(runs)} {slug}")
            # A folder from an older base recipe resumes only the steps whose own fingerprints still match.
            report = _report_of(compress(variant, run_dir, resume=resume, progress=progress, events=events, device=device).report)
            atomic_write_json(run_dir / VARIANT_FILE, {"fingerprint": variant_fp})
        # a copy named after the variant: retiming below rewrites its latency, not the variant's own report
        finals.append(Measurement.from_json({**report.final_model.to_json(), "name": slug, "stage": "sweep"}))
        dirs.append(run_dir / "models" / report.final)
        # a variant's row: its seconds and grid assignment (no config, notes or details of its own)
        rows.append(StageRecord(slug, seconds=sum(s.seconds for s in report.stages), extra={"assignment": assignment},
                                absent=frozenset({"config", "notes", "details"})))
    baseline_report = Report.from_json(load_report(out / "variants" / runs[0][0] / "report.json"))
    teacher = baseline_report.baseline_model
    models = [teacher, *finals]
    dirs.insert(0, out / "variants" / runs[0][0] / "models" / teacher.name)
    events(f"timing the baseline and {len(finals)} final models side by side")
    _retime(base, models, dirs)
    best = max(finals, key=lambda m: (m.primary_metric[1] or 0.0, -(m.size_bytes or 0)))
    card = Report.create(
        recipe=base, baseline=teacher.name, final=best.name, models=models, stages=rows,
        extra={"sweep": {"grid": {a.path: list(a.values) for a in axes}, "variants": [r.name for r in rows]}})
    write_report(out, card)
    return card


def _variant_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the recipe a finished variant ran, or None (an older slimtorch, or a damaged file)."""
    try:
        data = read_json(run_dir / VARIANT_FILE, 10_000, RecipeError, "the variant runs again")
    except RecipeError:
        return None
    value = data.get("fingerprint") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _report_of(report: Report | None) -> Report:
    if report is None:  # compress returns no report on torchrun ranks other than 0; sweep refuses torchrun
        raise RecipeError("slimtorch sweep runs in one process; under torchrun, run each variant with `slimtorch compress` instead.")
    return report
