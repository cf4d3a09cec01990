"""What a run logs to its tracker: the recipe as params, each training curve per epoch, each model's measured
figures, and the report files and plots as artifacts, all read from the finished run's output directory.

Reading the directory rather than hooking the run keeps tracking out of the training loop and makes a resumed
run log the same things as an uninterrupted one: every training run (``fit``) checkpoints its history per epoch
in each training step's ``last/meta.json`` inside the run's work folder, the models' figures are in ``report.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slimtorch.errors import SlimtorchError, TrackingError
from slimtorch.measure.measurement import Measurement
from slimtorch.report.card import Report
from slimtorch.track.base import Tracker, Trackers
from slimtorch.track.config import TrackingConfig

log = logging.getLogger(__name__)

REPORT_FILES = ("report.md", "report.json", "report.html", "recipe.yaml")
MAX_PARAM_CHARS = 500  # MLflow keeps param values up to 6000 characters; a long list is summarised
MAX_META_BYTES = 10_000_000


def open_tracker(config: TrackingConfig, out: Path, name: str) -> Tracker:
    """Start one run in each tracker ``config`` names.

    Raises:
        MissingExtraError: a tracker's package is not installed (the message names the extra).
        TrackingError: the tracker refused to start (a server that cannot be reached, a store it cannot write).
    """
    trackers: list[Tracker] = []
    with _tracker_errors("start a run"):
        if config.mlflow is not None:
            from slimtorch.track._mlflow import MLflowTracker

            trackers.append(MLflowTracker(config.mlflow, out, name))
        if config.tensorboard is not None:
            from slimtorch.track._tensorboard import TensorBoardTracker

            trackers.append(TensorBoardTracker(config.tensorboard, out, name))
        if config.wandb is not None:
            from slimtorch.track._wandb import WandbTracker

            trackers.append(WandbTracker(config.wandb, out, name))
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)


@contextmanager
def _tracker_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except SlimtorchError:
        raise
    except Exception as exc:  # each tool raises its own types (MlflowException, OSError, wandb.Error, ...)
        raise TrackingError(f"the experiment tracker could not {doing}: {type(exc).__name__}: {str(exc)[:300]}. The run itself "
                            "finished and its report is written; check the tracking settings (tracking_uri, log_dir, "
                            "wandb mode) and log it again with the same command and --resume.") from exc


def track_run(config: TrackingConfig | None, out: Path, report: Report, events: Callable[[str], None] | None = None) -> None:
    """Log the finished run in ``out`` (its recipe, curves, figures, reports) as one run of each tracker."""
    if config is None:
        return
    tracker = open_tracker(config, out, str(report.recipe.get("name", out.name)))
    _log_and_finish(tracker, out, report)
    (events or log.info)(f"logged to {tracker.where}")


def track_sweep(config: TrackingConfig | None, out: Path, report: Report, variants: list[tuple[str, Path]],
                events: Callable[[str], None] | None = None) -> None:
    """Log a finished sweep: the comparison as the parent run, one child run per variant ``(slug, folder)``."""
    if config is None:
        return
    tracker = open_tracker(config, out, str(report.recipe.get("name", out.name)))
    try:
        with _tracker_errors("log a sweep variant"):
            for slug, folder in variants:
                child = tracker.child(slug)
                _log_and_finish(child, folder, Report.from_json(json.loads((folder / "report.json").read_text(encoding="utf-8"))))
    except BaseException:
        tracker.finish(failed=True)
        raise
    _log_and_finish(tracker, out, report)
    (events or log.info)(f"logged to {tracker.where}, one child run per variant")


def _log_and_finish(tracker: Tracker, out: Path, report: Report) -> None:
    try:
        with _tracker_errors("log the run"):
            log_report(tracker, out, report)
    except BaseException:
        tracker.finish(failed=True)
        raise
    with _tracker_errors("finish the run"):
        tracker.finish()


def log_report(tracker: Tracker, out: Path, report: Report) -> None:
    """Params, curves, figures and artifacts of the run in ``out`` to an open ``tracker``."""
    tracker.log_params(recipe_params(report.recipe))
    for name, history in training_curves(out).items():
        for point in history:
            values = {f"curve/{name}/{k}": float(v) for k, v in point.items() if k != "epoch" and _is_number(v)}
            tracker.log_metrics(values, step=int(point.get("epoch", 0)))
    figures: dict[str, float] = {}
    for m in report.models:
        figures.update({f"model/{m.name}/{k}": v for k, v in model_figures(m).items()})
    figures.update({f"final/{k}": v for k, v in model_figures(report.final_model).items()})
    tracker.log_metrics(figures)
    for file in REPORT_FILES:
        if (out / file).is_file():
            tracker.log_artifact(out / file, "report")
    for plot in sorted(out.glob("*.png")):
        tracker.log_artifact(plot, "plots")


def recipe_params(recipe: dict[str, Any] | list[Any], prefix: str = "") -> dict[str, str]:
    """The recipe as flat ``dotted.key -> value`` strings (``stages.0.distill.temperature``: ``4.0``)."""
    out: dict[str, str] = {}
    items: Any = recipe.items() if isinstance(recipe, dict) else enumerate(recipe)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value or isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
            out.update(recipe_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
            out[name] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 1] + "…"
    return out


def training_curves(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every training run's per-epoch history (loss, val, lr), named by its checkpoint folder under ``out/work``.

    ``teacher``, ``01_distill/student``, ``02_prune/step0``: the same names as the run's checkpoints.
    """
    curves: dict[str, list[dict[str, Any]]] = {}
    work = out / "work"
    for meta in sorted(work.glob("**/last/meta.json")):
        if meta.stat().st_size > MAX_META_BYTES:
            continue
        try:
            history = json.loads(meta.read_text(encoding="utf-8")).get("history")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("training curve %s not logged: %s", meta, exc)
            continue
        if isinstance(history, list) and history:
            curves[meta.parent.parent.relative_to(work).as_posix()] = [h for h in history if isinstance(h, dict)]
    return curves


def model_figures(m: Measurement) -> dict[str, float]:
    """A model's measured figures as flat numbers: counts, bytes, latency p50/p90 per batch, metrics, energy."""
    out: dict[str, float] = {}
    for key in ("params", "nonzero_params", "size_bytes", "compressed_bytes", "macs", "agreement", "peak_memory_bytes"):
        value = getattr(m, key)
        if _is_number(value):
            out[key] = float(value)
    for batch, timing in m.latency_ms.items():
        for stat, value in (("p50", timing.p50), ("p90", timing.p90)):
            if _is_number(value):
                out[f"latency_ms_{stat}_b{batch}"] = float(value)
    out.update({k: float(v) for k, v in m.metrics.items() if _is_number(v)})
    out.update({f"robustness_{k}": float(v) for k, v in m.robustness.items() if _is_number(v)})
    out.update({f"decode_tokens_per_s_b{k}": float(v) for k, v in m.decode_tokens_per_s.items() if _is_number(v)})
    energy = getattr(m, "energy", None) or {}
    for kind in ("measured", "estimated"):
        for batch, joules in (energy.get(kind) or {}).get("joules_per_call", {}).items():
            if _is_number(joules):
                out[f"energy_{kind}_j_per_call_b{batch}"] = float(joules)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

