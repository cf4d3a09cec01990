"""TensorBoard adapter: event files through ``torch.utils.tensorboard.SummaryWriter``.

Params go to TensorBoard's HParams tab (``add_hparams``) and, readable as text, to a ``params`` text summary;
reports are text summaries and plots are images. A sweep's variants are sub-folders of the log directory, so
TensorBoard lists each as its own run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from slimtorch.errors import MissingExtraError
from slimtorch.track.config import TensorBoardConfig

TEXT_SUFFIXES = (".md", ".json", ".yaml", ".txt")
MAX_TEXT_CHARS = 1_000_000  # a text summary this long is a mistake, not a report


def _writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingExtraError(f"tracking: {{tensorboard: ...}} needs TensorBoard: pip install 'slimtorch[tensorboard]'; {exc}.") from exc
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardTracker:
    """One TensorBoard run: a log directory of event files."""

    def __init__(self, config: TensorBoardConfig, out: Path, name: str) -> None:
        self.log_dir = Path(config.log_dir) if config.log_dir else out / "tensorboard"
        self.writer = _writer(self.log_dir)
        self.where = f"TensorBoard events in {self.log_dir}"
        self.params: dict[str, str] = {}
        self.figures: dict[str, float] = {}

    def log_params(self, params: dict[str, str]) -> None:
        self.params.update(params)
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("params", f"| param | value |\n|---|---|\n{table}", 0)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step or 0)
        if step is None:
            self.figures.update(metrics)

    def log_artifact(self, path: Path, folder: str) -> None:
        tag = re.sub(r"[^A-Za-z0-9_./-]", "_", f"{folder}/{path.name}" if folder else path.name)
        if path.suffix == ".png":
            from matplotlib.image import imread

            image = imread(str(path))  # (H, W, C) floats in [0, 1]
            self.writer.add_image(tag, image[..., :3], 0, dataformats="HWC")
        elif path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")[:MAX_TEXT_CHARS]
            # TensorBoard renders text summaries as Markdown; code blocks keep JSON and YAML readable
            self.writer.add_text(tag, text if path.suffix == ".md" else f"```\n{text}\n```", 0)

    def child(self, name: str) -> TensorBoardTracker:
        return TensorBoardTracker(TensorBoardConfig(log_dir=str(self.log_dir / name)), self.log_dir, name)

    def finish(self, failed: bool = False) -> None:
        if self.params and self.figures:
            # the HParams tab: this run's settings beside its final figures (its own sub-run, as add_hparams writes)
            self.writer.add_hparams(self.params, {f"hparam/{k}": v for k, v in self.figures.items() if k.startswith("final/")},
                                    run_name="hparams")
        self.writer.close()
