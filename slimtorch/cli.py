"""The ``slimtorch`` command line: parsing and printing only; the work happens in the library.

Every slimtorch error becomes one red line and exit code 2 (no traceback).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from slimtorch.errors import RecipeError, SlimtorchError
from slimtorch.resources import check_device_spec
from slimtorch.version import __version__

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only inside the commands that need them
    from slimtorch.report.card import Report

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Make a trained PyTorch model smaller and faster, and prove it.")
# Piped output has no terminal width; keep tables readable in logs and CI rather than 80 columns.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 200)


def _fail(message: str, code: int = 2) -> None:
    # escape: a message quoting `[i]` or `[bold]` from user input must print as written, not as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Conditions of the machine, not bugs: one line each, like a user error.
_SYSTEM_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EFBIG: "the file-size limit was reached", errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EIO: "an input/output error"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was so it unwinds (and cleans up) exactly like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn expected failures into one actionable line and exit code 2 (130 when interrupted)."""
    try:
        yield
    except SlimtorchError as exc:
        from slimtorch.launch import record_worker_error

        record_worker_error(exc)  # a worker of `processes: N` tells the launching process what was refused
        _fail(str(exc))
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        _fail(f"{what}; finished steps are kept: run the same command with --resume to continue where it stopped.", 130)
    except OSError as exc:
        if exc.errno not in _SYSTEM_ERRNOS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        _fail(f"stopped{where}: {_SYSTEM_ERRNOS[exc.errno]} ({exc.strerror}). Nothing half-written was kept; free space or "
              "choose another --out, then run the same command with --resume to continue.")
    except (MemoryError, RuntimeError) as exc:
        from slimtorch.resources import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        _fail(f"ran out of memory ({(str(exc).splitlines() or [''])[0][:160] or type(exc).__name__}). Lower data.batch_size or "
              "evaluate.latency.batch_sizes, or use a smaller model; finished steps are kept for --resume.")


class _RichProgress:
    """``progress(description, total)`` → context manager yielding ``advance(n=1, **fields)``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    @contextmanager
    def __call__(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        if self.quiet:
            yield lambda n=1, **fields: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: Any) -> None:
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                bar.update(task, advance=n, info=info)

            yield advance


def print_models_table(report: Report) -> None:
    """The report card as a rich table: one row per model (the figures and units of report.md)."""
    from slimtorch.report.table import batches, fmt_bytes, fmt_count, metric_of

    table = Table(title=f"slimtorch report: {report.recipe.get('name', '')}", show_lines=False)
    sizes = batches(report.models)
    for col in ["model", "stage", "params", "nonzero", "size", "MACs", "runtime", *[f"p50 ms b{b}" for b in sizes], "metric", "agree"]:
        table.add_column(col, justify="left" if col in ("model", "stage", "runtime") else "right")
    for m in report.models:
        name, metric = metric_of(m)
        metric_s = "-" if metric is None else (f"{100 * metric:.2f}%" if name == "accuracy" else f"cos {metric:.4f}")
        if metric is None and m.metrics.get("perplexity") is not None:  # causal LMs: lower is better
            metric_s = f"ppl {m.metrics['perplexity']:.2f}"
        lat = [f"{m.latency_ms[b].p50:.3f}" if b in m.latency_ms else "-" for b in sizes]
        agree = m.agreement
        table.add_row(m.name, m.stage, fmt_count(m.params), fmt_count(m.nonzero_params), fmt_bytes(m.size_bytes),
                      fmt_count(m.macs), m.runtime, *lat, metric_s, "-" if agree is None else f"{100 * agree:.1f}%")
    console.print(table)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


def _run(recipe: Any, out: Path | None, resume: bool, force: bool, quiet: bool, device: str | None, track: list[str] | None = None) -> None:
    from slimtorch.distributed import launched_by_torchrun
    from slimtorch.run.pipeline import compress as run_compress

    with _user_errors():
        recipe = _with_tracking(recipe, track)
    if launched_by_torchrun():
        _run_under_torchrun(recipe, out, resume, force, quiet, device)  # never returns
    events = (lambda msg: None) if quiet else (lambda msg: console.print(f"[cyan]•[/] {msg}", highlight=False))
    with _user_errors():
        result = run_compress(recipe, out, resume=resume, force=force, progress=_RichProgress(quiet), events=events, device=device)
    if result.report is not None:  # one process: it measured and wrote the report
        print_models_table(result.report)
    console.print(f"report: {result.out / 'report.md'}  {result.out / 'report.json'}  {result.out / 'pareto.png'}", highlight=False)


def _run_under_torchrun(recipe: Any, out: Path | None, resume: bool, force: bool, quiet: bool, device: str | None) -> None:
    """Every rank runs the recipe; rank 0 prints. Each rank leaves through ``finish`` (see FIELD-NOTES: DDP exit trap)."""
    from slimtorch.distributed import finish, is_main

    code = 0
    try:
        _run_one_rank(recipe, out, resume, force, quiet, device, is_main)
    except typer.Exit as exc:
        code = exc.exit_code
    finish(code)


def _run_one_rank(recipe: Any, out: Path | None, resume: bool, force: bool, quiet: bool, device: str | None, is_main: Any) -> None:
    from slimtorch.run.pipeline import compress as run_compress

    events = (lambda msg: None) if quiet else (lambda msg: console.print(f"[cyan]•[/] {msg}", highlight=False))
    with _user_errors():
        result = run_compress(recipe, out, resume=resume, force=force, progress=_RichProgress(quiet or not is_main()), events=events,
                              device=device)
    if result.report is not None:  # rank 0 alone measures and writes
        print_models_table(result.report)
        console.print(f"report: {result.out / 'report.md'}  {result.out / 'report.json'}", highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"slimtorch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log slimtorch's and other libraries' INFO messages (onnxruntime, MLflow, ...; quiet by default).")] = False,
) -> None:
    from slimtorch.logs import restore_library_logs, show_library_logs, silence_library_logs

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    show_library_logs(verbose)
    quieted = silence_library_logs()  # onnxruntime's quantizer, MLflow, alembic...: quiet unless --verbose

    def restore() -> None:  # a process that runs the CLI in-process (tests, notebooks) gets its logging back
        restore_library_logs(quieted)
        show_library_logs(False)

    ctx.call_on_close(restore)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a host that installed its own handler keeps it
        signal.signal(signal.SIGTERM, _on_sigterm)
    # `module:function` references resolve from the working directory, as with `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default runs/<recipe name>).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out, skipping finished steps.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing run in --out.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Train on auto, cpu, cuda, cuda:N or mps (overrides the recipe's device).")]
TrackOpt = Annotated[list[str] | None, typer.Option(
    "--track", help="Log the run to mlflow (local SQLite store in OUT/mlflow), tensorboard (OUT/tensorboard) or wandb (offline); "
    "repeatable; the recipe's own tracking settings win.")]


def _with_tracking(recipe: Any, track: list[str] | None) -> Any:
    """The recipe (a path, YAML text or dict) with the ``--track`` backends added to its ``tracking:`` block."""
    if not track:
        return recipe
    from slimtorch.recipe import load_recipe
    from slimtorch.track.config import TrackingConfig

    loaded = load_recipe(recipe)
    try:
        wanted = [TrackingConfig.of(t) for t in track]
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    tracking = loaded.tracking
    for extra in wanted:
        tracking = extra if tracking is None else tracking.merged(extra)
    return loaded.model_copy(update={"tracking": tracking})


@app.command()
def demo(out: OutOpt = Path("runs/demo"), resume: ResumeOpt = False, force: ForceOpt = False, quiet: QuietOpt = False,
         device: DeviceOpt = None, track: TrackOpt = None) -> None:
    """Train a digits teacher, distill a small student, prune it (recovered by distillation), quantize it, print the report card."""
    text = resources.files("slimtorch.recipes").joinpath("demo.yaml").read_text()
    _run(text, out, resume, force, quiet, device, track)


@app.command()
def compress(recipe: Path, out: OutOpt = None, resume: ResumeOpt = False, force: ForceOpt = False, quiet: QuietOpt = False,
             device: DeviceOpt = None, track: TrackOpt = None) -> None:
    """Run RECIPE (a YAML file) end to end and write the report card."""
    _run(recipe, out, resume, force, quiet, device, track)


@app.command()
def sweep(
    recipe: Path,
    grid: Annotated[list[str], typer.Option("--grid", "-g", help="An axis like distill.temperature=1,2,4 (repeatable).")],
    out: OutOpt = None,
    quiet: QuietOpt = False,
    device: DeviceOpt = None,
    track: TrackOpt = None,
) -> None:
    """Run RECIPE once per grid point (resumable) and compare the final models in one report with a Pareto plot."""
    from slimtorch.recipe import load_recipe
    from slimtorch.run.sweep import sweep as run_sweep

    events = (lambda msg: None) if quiet else (lambda msg: console.print(f"[cyan]•[/] {msg}", highlight=False))
    with _user_errors():
        loaded = _with_tracking(load_recipe(recipe), track)
        out = out or Path("runs") / f"{loaded.name}-sweep"
        result = run_sweep(loaded.to_dict(), grid, out, progress=_RichProgress(quiet), events=events, device=device)
    print_models_table(result)
    console.print(f"sweep report: {out / 'report.md'}  {out / 'pareto.png'}", highlight=False)


@app.command()
def validate(recipe: Path) -> None:
    """Check RECIPE without running it: every key, value and stage name."""
    from slimtorch.run.pipeline import load_recipe

    with _user_errors():
        r = load_recipe(recipe)
    stages = " → ".join(s.kind for s in r.stages) or "(no stages)"
    console.print(f"[green]ok[/] {recipe}: {r.name}, data {r.data.source}, {len(r.teachers)} teacher(s), stages: {stages}", highlight=False)


@app.command()
def measure(
    model_ref: str,
    data: Annotated[str, typer.Option(help="Data source to measure on (digits, mnist1d, text, module:function).")] = "digits",
    args: Annotated[str, typer.Option(help="Model constructor args as JSON, e.g. '{\"hidden\": [64]}'.")] = "{}",
    data_args: Annotated[str, typer.Option(help="Data source args as JSON, e.g. '{\"path\": \"held_out.txt\"}' for --data text.")] = "{}",
    batch_sizes: Annotated[str | None, typer.Option(help="Comma-separated batch sizes to time (default 1,64; 1 for a causal LM).")] = None,
    evaluate: Annotated[str | None, typer.Option(
        "--evaluate", help="The recipe's evaluate block as JSON or a YAML/JSON file, e.g. '{\"latency\": {\"max_seconds\": 5}}'.")] = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    trust_code: Annotated[bool, typer.Option(
        "--trust-code", help="Let a saved directory rebuild its model with the module:function factory it names (imports and runs it)."
    )] = False,
    device: Annotated[str | None, typer.Option("--device", help="Measure on auto (CUDA when present), cpu, cuda, cuda:N or mps.")] = None,
) -> None:
    """Measure one model (a saved slimtorch directory or any model reference) and print its report row."""
    from slimtorch import artifact
    from slimtorch.data import build_data
    from slimtorch.device import resolve_device
    from slimtorch.measure import measure as run_measure
    from slimtorch.measure.config import LatencyConfig
    from slimtorch.models import build_model
    from slimtorch.outdir import claim_out_dir
    from slimtorch.report import write_report
    from slimtorch.report.card import Report

    with _user_errors():
        kwargs, source_args = _json_option("--args", args), _json_option("--data-args", data_args)
        try:
            sizes = [int(b) for b in batch_sizes.split(",")] if batch_sizes is not None else []
        except ValueError as exc:
            raise RecipeError(f"--batch-sizes must be integers like 1,64; got {batch_sizes!r}.") from exc
        if not isinstance(source_args, dict):
            raise RecipeError(f"--data-args must be a JSON object like '{{\"path\": \"text.txt\"}}'; got {data_args!r}.")
        if not isinstance(kwargs, dict) or any(b < 1 for b in sizes):
            raise RecipeError(f"--args must be a JSON object and --batch-sizes positive integers like 1,64; got {args!r} and {batch_sizes!r}.")
        try:
            where = resolve_device(check_device_spec(device or "auto"))
        except ValueError as exc:
            raise RecipeError(f"--device: {exc}") from None
        config = _evaluate_option(evaluate)
        with claim_out_dir(out, resume=False, force=force, kind="measure") if out is not None else nullcontext():
            bundle = build_data(data, args=source_args)
            model = build_model(model_ref, kwargs, input_shape=bundle.input_shape, num_classes=bundle.num_classes, trust_code=trust_code)
            if sizes:
                config = config.model_copy(update={"latency": LatencyConfig(**{**config.latency.model_dump(), "batch_sizes": sizes})})
            model_dir = Path(model_ref) if Path(model_ref).is_dir() else None
            if out is not None and model_dir is None:
                model_dir = out / "models" / "model"
                artifact.save(model, model_dir)
            m = run_measure(model, name=Path(model_ref).name or model_ref, stage="measure", data=bundle, config=config, artifact_dir=model_dir,
                            device=where)
            report = Report.create(recipe={"name": f"measure {model_ref}"}, baseline=m.name, final=m.name, models=[m])
            if out is not None:
                write_report(out, report)
        print_models_table(report)
        if m.decode_tokens_per_s:
            tps = ", ".join(f"b{b} {v:.1f}" for b, v in m.decode_tokens_per_s.items())
            console.print(f"perplexity {m.metrics['perplexity']:.3f}, decode tokens/s {tps}", highlight=False)


@app.command()
def doctor(
    threads: Annotated[int, typer.Option(min=1, help="Intra-op threads while timing.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Probe this machine (CPU instruction sets, cores, GPU) and time each kernel family here, so you see what pays off."""
    from slimtorch.quantize.kernels import doctor as run_doctor

    with _user_errors():
        result = run_doctor(threads=threads)
    if as_json:
        print(json.dumps(result))
        return
    machine = result["machine"]
    console.print(f"[bold]machine[/]: {escape(machine['summary'])}; torch {machine['torch_version']} runs its "
                  f"{machine['torch_capability']} kernels", highlight=False)
    shapes = list(dict.fromkeys(r["shape"] for r in result["kernels"]))
    table = Table(title=f"one Linear layer, {threads} thread(s): µs per call (speed against torch fp32)")
    table.add_column("kernel")
    table.add_column("runtime")
    for shape in shapes:
        table.add_column(shape, justify="right")
    for kernel in dict.fromkeys((r["kernel"], r["runtime"]) for r in result["kernels"]):
        cells = []
        for shape in shapes:
            row = next((r for r in result["kernels"] if (r["kernel"], r["runtime"]) == kernel and r["shape"] == shape), None)
            if row is None or row["us"] is None:
                cells.append("—" if row is None else escape(row["note"]))
                continue
            colour = "green" if row["speedup_vs_fp32"] >= 1.1 else "red" if row["speedup_vs_fp32"] < 0.9 else ""
            text = f"{row['us']:,.1f} ({row['speedup_vs_fp32']:.2f}×)"
            cells.append(f"[{colour}]{text}[/]" if colour else text)
        table.add_row(escape(kernel[0]), kernel[1], *cells)
    console.print(table)
    for shape in shapes:
        rows = [r for r in result["kernels"] if r["shape"] == shape and r["us"] is not None]
        best = min(rows, key=lambda r: r["us"])
        slower = [r["kernel"] for r in rows if r["speedup_vs_fp32"] < 0.9]
        console.print(f"{shape}: fastest is {escape(best['kernel'])} ({best['speedup_vs_fp32']:.2f}× torch fp32)"
                      + (f"; slower than fp32 here: {escape(', '.join(slower))}" if slower else ""), highlight=False)


def _evaluate_option(text: str | None) -> Any:
    """``--evaluate``: a JSON object, or a YAML/JSON file holding the recipe's ``evaluate:`` block, as an EvaluateConfig."""
    import yaml
    from pydantic import ValidationError

    from slimtorch.measure.config import EvaluateConfig

    if text is None:
        return EvaluateConfig()
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise RecipeError(f"--evaluate takes a JSON object like '{{\"latency\": {{\"max_seconds\": 5}}}}' or a YAML/JSON file; "
                              f"{text!r} is neither (no such file).")
        if path.stat().st_size > 1_000_000:
            raise RecipeError(f"--evaluate file {path} is {path.stat().st_size:,} bytes; an evaluate block is a few lines.")
        try:
            block = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RecipeError(f"--evaluate file {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
        block = block.get("evaluate", block) if isinstance(block, dict) else block
    else:
        block = _json_option("--evaluate", text)
    if not isinstance(block, dict):
        raise RecipeError(f"--evaluate must hold a mapping like {{latency: {{max_seconds: 5}}}}; got {type(block).__name__}.")
    try:
        return EvaluateConfig.model_validate(block)
    except ValidationError as exc:
        problems = "; ".join(f"evaluate.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        fields = ", ".join(EvaluateConfig.model_fields)
        raise RecipeError(f"--evaluate: {problems} (evaluate's fields: {fields}).") from None


def _json_option(flag: str, text: str) -> Any:

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{flag} must be a JSON object like '{{\"key\": 1}}' ({exc}); got {text!r}.") from exc


@app.command()
def report(run_dir: Path) -> None:
    """Re-render report.md, pareto.png and report.html from RUN_DIR/report.json."""
    from slimtorch.report import load_report, write_report
    from slimtorch.report.card import Report

    with _user_errors():
        card = Report.from_json(load_report(run_dir / "report.json"))
        write_report(run_dir, card)
        print_models_table(card)
    console.print(f"rewrote {run_dir / 'report.md'}", highlight=False)


def run() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
