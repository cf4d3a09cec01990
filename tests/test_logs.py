"""Library log messages are quiet by default in CLI and API runs, and shown with --verbose."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slimtorch.logs import quiet_library_logs, show_library_logs

ROOT = Path(__file__).resolve().parents[1]
# A tiny BERT to int8 in onnxruntime: its quantizer logs INFO lines per tensor and per attention MatMul through the root logger.
RECIPE = """name: noisy
data: {source: text, args: {max_sentences: 60, max_length: 16}, batch_size: 16}
teacher: {model: "hf:tiny-bert", args: {kind: encoder, config: {model_type: bert, hidden_size: 32, num_hidden_layers: 2,
  num_attention_heads: 2, intermediate_size: 64, vocab_size: 30522}}}
stages:
  - quantize: {mode: dynamic_int8, runtime: onnxruntime}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 0, max_seconds: 1}, noise_levels: [], max_eval_examples: 16}
"""
INFO_LINE = re.compile(r"^(INFO|DEBUG)\b|\[INFO\]|\bINFO (root|onnxruntime|mlflow|alembic)", re.MULTILINE)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    recipe = tmp_path / "noisy.yaml"
    recipe.write_text(RECIPE)
    return subprocess.run([sys.executable, "-c", "from slimtorch.cli import app; app()", *flags, "compress", str(recipe),
                           "--out", str(tmp_path / "out"), "--quiet", "--force"],
                          check=False, capture_output=True, text=True, env=_env(), timeout=300)


@pytest.mark.slow
def test_cli_run_has_no_library_info_lines_and_verbose_shows_them(tmp_path):
    quiet = _cli(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert not INFO_LINE.search(quiet.stderr), quiet.stderr[:2000]
    assert "Loading weights" not in quiet.stderr, quiet.stderr[:2000]  # transformers' progress bars
    loud = _cli(tmp_path, "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert INFO_LINE.search(loud.stderr), "--verbose printed no INFO line: the quiet test above proves nothing"


API_RUN = """
import logging, sys, yaml
# onnxruntime's 4-bit quantizer module calls logging.basicConfig(level=INFO) when imported: the root logger prints INFO
import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401
import slimtorch
slimtorch.compress(yaml.safe_load(sys.argv[1]), sys.argv[2], force=True)
logging.getLogger("onnxruntime").info("after the run: shown again")
"""


@pytest.mark.slow
def test_api_run_is_quiet_inside_and_leaves_logging_as_it_was(tmp_path):
    proc = subprocess.run([sys.executable, "-c", API_RUN, RECIPE, str(tmp_path / "api")], capture_output=True, text=True,
                          env=_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    # onnxruntime's basicConfig(INFO) shows slimtorch's own INFO messages too: those are the user's to see
    lines = [line for line in proc.stderr.splitlines() if "INFO" in line and " slimtorch." not in line]
    assert lines and all("after the run: shown again" in line for line in lines), proc.stderr[:2000]


def test_quiet_block_drops_library_and_root_info_but_keeps_slimtorch_and_user_levels(caplog):
    caplog.set_level(logging.INFO)
    user = logging.getLogger("transformers")
    user.setLevel(logging.INFO)  # the user's own choice survives
    try:
        with quiet_library_logs():
            logging.getLogger("onnxruntime.quantization").info("library info")
            logging.info("root info")  # noqa: LOG015 - what onnxruntime does
            logging.getLogger("slimtorch.run").info("slimtorch info")
            user.info("user-enabled info")
            logging.getLogger("onnxruntime").warning("library warning")
        logging.info("root info after")  # noqa: LOG015
    finally:
        user.setLevel(logging.NOTSET)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["slimtorch info", "user-enabled info", "library warning", "root info after"]


def test_show_library_logs_turns_the_quiet_block_off(caplog):
    caplog.set_level(logging.INFO)
    show_library_logs(True)
    try:
        with quiet_library_logs():
            logging.getLogger("onnxruntime").info("shown")
    finally:
        show_library_logs(False)
    assert [r.getMessage() for r in caplog.records] == ["shown"]
