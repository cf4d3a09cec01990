"""Layering, checked in fresh interpreters: stages register on first lookup (no import needed first), and the
recipe schema is a leaf that loads config modules only, not the engines behind them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slimtorch.core import BUILTIN_STAGES, STAGES

ROOT = Path(__file__).resolve().parents[1]
# A recipe entry for each stage that validates as written (every other field keeps its default).
MINIMAL = {"distill": "{epochs: 1}", "export": "{}", "finetune": "{epochs: 1}", "lora": "{epochs: 1}",
           "prune": "{sparsity: 0.5}", "quantize": "{mode: dynamic_int8}"}


def _fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_builtin_stage_has_a_minimal_recipe():
    assert set(MINIMAL) == set(BUILTIN_STAGES) == set(STAGES.names())


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_a_recipe_with_any_stage_loads_in_a_fresh_interpreter(tmp_path: Path, kind: str):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher: {{model: mlp}}\nstages:\n  - {kind}: {MINIMAL[kind]}\n", encoding="utf-8")
    out = _fresh(f"import slimtorch; r = slimtorch.load_recipe({str(recipe)!r}); "
                 "print(type(r.stages[0].config).__name__)")
    assert out.strip() == STAGES.get(kind).config_cls.__name__


def test_the_recipe_schema_imports_only_config_leaves_about_24_slimtorch_modules_and_no_torch():
    out = _fresh("import sys, json, slimtorch.recipe.schema; "
                 "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('slimtorch', 'torch'))))")
    loaded = json.loads(out)
    assert "torch" not in loaded, loaded  # the schema checks spellings; torch is for the run
    # 104 before the config leaves; the tracking block added track + track.config; a llama.cpp target's export_args added
    # export + export.config and, through export.recover, distill + distill.config: leaves all, none loads torch
    assert len(loaded) <= 24, loaded
    assert not [m for m in loaded if m.endswith((".stage", ".loop", ".search"))], loaded


def test_a_user_stage_cannot_take_a_builtin_name():
    from pydantic import BaseModel

    from slimtorch.core import Stage

    class Cfg(BaseModel):
        pass

    with pytest.raises(ValueError, match="stage 'lora' is already registered"):
        class Clash(Stage[Cfg], kind="lora"):
            pass
