"""state.json, fingerprints and the epoch-checkpoint folders that --resume relies on."""

import json

import pytest

from slimtorch.errors import OutputDirError
from slimtorch.run.resume import STATE_FILE, ResumeState, StepEntry, claim_work_dir, fingerprint


def test_stale_epoch_checkpoints_are_cleared_when_the_step_changes(tmp_path):
    work = tmp_path / "01_distill"
    claim_work_dir(work, "aaa")
    (work / "last").mkdir()
    claim_work_dir(work, "aaa")  # same computation: its checkpoints may resume it
    assert (work / "last").exists()
    claim_work_dir(work, "bbb")  # changed settings: old checkpoints must not leak into the new run
    assert not (work / "last").exists() and (work / "FINGERPRINT").read_text() == "bbb"


def test_fingerprint_ignores_key_order_but_not_values():
    assert fingerprint({"a": 1, "b": [1, 2]}, 0) == fingerprint({"b": [1, 2], "a": 1}, 0)
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint([1, 2]) != fingerprint([2, 1])
    assert len(fingerprint("x")) == 16


def test_a_step_is_done_only_for_its_fingerprint_and_survives_a_reload(tmp_path):
    state = ResumeState(tmp_path, resume=False)
    state.save("teacher", StepEntry("f1"))
    assert state.done("teacher", "f1") == StepEntry("f1")
    assert state.done("teacher", "f2") is None and state.done("1_prune", "f1") is None
    assert ResumeState(tmp_path, resume=True).done("teacher", "f1") is not None
    assert ResumeState(tmp_path, resume=False).steps == {}  # a fresh run ignores what is on disk


def test_a_changed_step_makes_every_later_step_stale(tmp_path):
    state = ResumeState(tmp_path, resume=False)
    for name in ("teacher", "1_distill", "2_prune", "3_quantize"):
        state.save(name, StepEntry(name))
    state.invalidate_after("2_prune")
    assert list(state.steps) == ["teacher", "1_distill"]
    state.invalidate_after("not_there")  # a step never run changes nothing
    assert list(state.steps) == ["teacher", "1_distill"]


@pytest.mark.parametrize("text", ['["teacher"]', '{"steps": ', '{"no_steps": {}}'])
def test_a_corrupted_state_file_is_refused_with_the_fix(tmp_path, text):
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(OutputDirError, match=r"state\.json is corrupted .*use --force to start the run again"):
        ResumeState(tmp_path, resume=True)


def test_the_state_file_names_the_version_that_wrote_it(tmp_path):
    from slimtorch.version import __version__

    ResumeState(tmp_path, resume=False).save("plan", StepEntry("p", output={"stages": []}))
    entry = {"fingerprint": "p", "row": None, "measurements": [], "evaluate": None, "output": {"stages": []}}
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"slimtorch_version": __version__, "steps": {"plan": entry}}


def test_teachers_plans_and_stages_share_one_entry_shape_and_the_earlier_shapes_still_read(tmp_path):
    teacher = {"name": "teacher", "stage": "teacher"}
    old = {"teacher": {"fingerprint": "t", "measurement": teacher, "seconds": 1.5, "row": None, "evaluate": "e"},
           "plan": {"fingerprint": "p", "plan": {"stages": ["prune"]}},
           "1_prune": {"fingerprint": "s", "row": {"model": "1_prune"}, "measurements": [{"name": "1_prune"}], "evaluate": "e"}}
    (tmp_path / STATE_FILE).write_text(json.dumps({"slimtorch_version": "0.1.0", "steps": old}))
    state = ResumeState(tmp_path, resume=True)
    assert state.done("teacher", "t") == StepEntry("t", measurements=[teacher], evaluate="e")
    assert state.done("plan", "p") == StepEntry("p", output={"stages": ["prune"]})
    assert state.done("1_prune", "s") == StepEntry("s", row={"model": "1_prune"}, measurements=[{"name": "1_prune"}], evaluate="e")
    state.save("teacher", state.done("teacher", "t"))  # rewritten in today's one shape
    assert set(json.loads((tmp_path / STATE_FILE).read_text())["steps"]["teacher"]) == set(StepEntry("x").to_json())
