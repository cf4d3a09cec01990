"""Token-level distillation of causal LMs on tiny random LLaMAs (real transformers, a real byte-level BPE tokenizer)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from slimtorch.core import RunContext, forward
from slimtorch.data import build_data
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.distill.losses import masked_token_mean, token_kl, top_k_token_kl
from slimtorch.distill.sequences import pack_text
from slimtorch.distill.token_hop import token_loss
from slimtorch.distill.top_k import TopKTeacherCache, top_k_of
from slimtorch.errors import RecipeError, ShapeMismatchError
from slimtorch.models import build_model
from slimtorch.models.hf import HFModel
from tests.tiny_llm import ENGLISH, load_tiny_gguf

pytest.importorskip("gguf")

VOCAB = 260  # tests/tiny_llm.py: 256 bytes, 3 merges, end-of-text


def tiny_lm(tokenizer, vocab: int = VOCAB, seed: int = 0) -> HFModel:
    """A one-layer LLaMA whose lm_head shares the embedding table (tied, as in SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128)
    return HFModel(LlamaForCausalLM(config).eval(), tokenizer, "causal_lm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A teacher and text (and a model read from a GGUF file); students differ from the teacher in their layer only."""
    root = tmp_path_factory.mktemp("tokens")
    from_gguf = load_tiny_gguf(root, hidden=32, layers=1, heads=4, kv_heads=2, ffn=64)
    teacher = tiny_lm(from_gguf.tokenizer, seed=0)
    with torch.no_grad():  # random weights give a near-uniform next token; a sharper teacher has more to teach
        teacher.hf.model.norm.weight.mul_(20.0)  # logits ~100x larger than at initialisation
        teacher.hf.model.layers[0].mlp.down_proj.weight.mul_(10.0)  # the layer, not only the current token, shapes them
        teacher.hf.model.layers[0].self_attn.o_proj.weight.mul_(10.0)
    text = root / "text.txt"  # 48 distinct lines: the text source drops duplicates
    text.write_text("\n".join(f"{s} ({i})" for i in range(4) for s in ENGLISH) + "\n", encoding="utf-8")
    data = build_data("text", args={"path": str(text)}, batch_size=4)
    return teacher, data, from_gguf


def student_of(teacher: HFModel, seed: int = 1) -> HFModel:
    student = tiny_lm(teacher.tokenizer, seed=seed)
    student.hf.model.embed_tokens.weight.data.copy_(teacher.hf.model.embed_tokens.weight)
    student.hf.model.norm.weight.data.copy_(teacher.hf.model.norm.weight)
    return student


def run(student, teacher, data, work: Path, **config):
    settings = {"epochs": 6, "lr": 1e-2, "patience": None, "tokens": {"seq_tokens": 32, "top_k": 16, "max_sequences": 16}, **config}
    return DistillStage(DistillConfig(**settings)).apply(student, RunContext(data=data, teacher=teacher, work_dir=work))[1]


def test_loss_and_heldout_kl_to_the_teacher_go_down_and_the_record_says_what_was_done(setup, tmp_path):
    teacher, data, _ = setup
    student = student_of(teacher)
    record = run(student, teacher, data, tmp_path, epochs=4, freeze=["*lm_head*"])
    d = record.details
    assert d["mode"] == "tokens" and d["top_k"] == 16 and d["seq_tokens"] == 32 and d["temperature"] == 1.0 and d["alpha"] == 0.0
    assert d["loss"]["end"] < 0.8 * d["loss"]["start"]
    assert d["heldout_kl_to_teacher"]["after"] < 0.8 * d["heldout_kl_to_teacher"]["before"]
    assert d["sequences_seen"] == 4 * d["sequences"] and d["tokens_seen"] == pytest.approx(4 * d["train_tokens"], rel=1e-3)
    assert d["teacher_cache"]["top_k"] == 16 and not d["teacher_cache"]["on_disk"]
    # freezing the tied lm_head froze the embedding table: one tensor, both names, said in the record
    assert d["frozen"]["names"] == ["hf.model.embed_tokens.weight"]
    assert d["frozen"]["tied"] == {"hf.lm_head.weight": "hf.model.embed_tokens.weight"}
    assert any("hf.lm_head.weight shares" in n for n in record.notes)
    fresh = student_of(teacher)
    assert torch.equal(student.hf.lm_head.weight, fresh.hf.model.embed_tokens.weight)
    assert not torch.equal(student.hf.model.layers[0].mlp.up_proj.weight, fresh.hf.model.layers[0].mlp.up_proj.weight)


def test_top_k_with_k_equal_to_the_vocabulary_is_the_full_kl_and_a_lower_bound_below():
    torch.manual_seed(0)
    student_logits = torch.randn(2, 5, 40, requires_grad=True)
    teacher_log_probs = F.log_softmax(torch.randn(2, 5, 40) * 3, dim=-1)
    full = token_kl(student_logits, teacher_log_probs, 1.0)
    exact = top_k_token_kl(student_logits, *top_k_of(teacher_log_probs, 40), 1.0)
    torch.testing.assert_close(exact, full, atol=1e-6, rtol=1e-5)
    (g_full,) = torch.autograd.grad(full.sum(), student_logits)
    (g_exact,) = torch.autograd.grad(exact.sum(), student_logits)
    torch.testing.assert_close(g_exact, g_full, atol=1e-6, rtol=1e-5)
    for k in (1, 8, 39):  # the bucketed KL never exceeds the full one, and the rest's mass is exact
        values, ids, rest = top_k_of(teacher_log_probs, k)
        assert (top_k_token_kl(student_logits, values, ids, rest, 1.0) <= full + 1e-6).all()
        torch.testing.assert_close(rest.exp() + values.exp().sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("on_disk", [False, True])
def test_the_cache_holds_the_teachers_top_k_at_every_position(setup, tmp_path, on_disk):
    _, _, teacher = setup  # the model read from a GGUF file
    seqs = pack_text(teacher.tokenizer, ENGLISH, 24)
    cache = TopKTeacherCache.build([teacher], [1.0], seqs, k=VOCAB, temperature=2.0, batch_size=3, work_dir=tmp_path,
                                   max_bytes=0 if on_disk else 1e9)
    assert cache.describe()["on_disk"] is on_disk and len(list(tmp_path.glob("*.npy"))) == (3 if on_disk else 0)
    idx = torch.tensor([2, 0, 1])
    values, ids, rest = cache.lookup(idx)
    x = {"input_ids": seqs.input_ids[idx], "attention_mask": seqs.attention_mask[idx]}
    with torch.no_grad():
        full = F.log_softmax(forward(teacher, x) / 2.0, dim=-1)
    assert ids.dtype == torch.int32 and torch.isneginf(rest).all()
    torch.testing.assert_close(values, full.gather(-1, ids.long()))
    student_logits = torch.randn(3, 24, VOCAB)
    torch.testing.assert_close(token_loss(student_logits, x, (values, ids, rest), 2.0, 0.0),
                               token_loss(student_logits, x, full, 2.0, 0.0), atol=1e-5, rtol=1e-5)
    cache.close()
    assert not list(tmp_path.glob("*.npy"))


def test_padded_positions_contribute_nothing(setup):
    teacher, _, _ = setup
    seqs = pack_text(teacher.tokenizer, ENGLISH[:2], 48)  # 2 full sequences' worth is not reached: the last is padded
    mask = seqs.attention_mask
    assert (mask[-1] == 0).any() and (mask[:-1] == 1).all()
    student = student_of(teacher)
    x = {"input_ids": seqs.input_ids, "attention_mask": mask}
    other = {"input_ids": torch.where(mask.bool(), seqs.input_ids, 7), "attention_mask": mask}  # other padding ids
    target = top_k_of(F.log_softmax(forward(teacher, x).detach(), -1), 8)
    garbage = tuple(torch.where(mask.bool()[..., None] if t.dim() == 3 else mask.bool(), t, t.new_full((), 3)) for t in target)
    for alpha in (0.0, 0.5):
        loss = token_loss(forward(student, x), x, target, 1.0, alpha)
        torch.testing.assert_close(token_loss(forward(student, other), other, garbage, 1.0, alpha), loss)
    # a padded sequence scores its real positions only: the mean equals the unpadded sequence's own
    n = int(mask[-1].sum())
    short = {"input_ids": seqs.input_ids[-1:, :n], "attention_mask": mask[-1:, :n]}
    short_target = tuple(t[-1:, :n] for t in target)
    padded = {"input_ids": seqs.input_ids[-1:], "attention_mask": mask[-1:]}
    torch.testing.assert_close(token_loss(forward(student, padded), padded, tuple(t[-1:] for t in target), 1.0, 0.5),
                               token_loss(forward(student, short), short, short_target, 1.0, 0.5))
    kl = top_k_token_kl(forward(student, x), *target, 1.0).detach()
    assert float(masked_token_mean(kl, mask)) == pytest.approx(float(kl[mask.bool()].mean()), rel=1e-5)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(setup, tmp_path):
    teacher, data, _ = setup
    start = student_of(teacher)
    straight, resumed = copy.deepcopy(start), copy.deepcopy(start)
    settings = {"epochs": 3, "examples_per_epoch": 8, "freeze": ["*embed_tokens*"]}
    full = run(straight, teacher, data, tmp_path / "a", **settings).details
    run(copy.deepcopy(start), teacher, data, tmp_path / "b", **{**settings, "epochs": 2})  # killed after epoch 2 of 3
    again = run(resumed, teacher, data, tmp_path / "b", **settings).details
    assert again["resumed_from_epoch"] == 2 and again["steps"] == full["steps"] == 6
    assert again["history"] == full["history"] and again["sequences_seen"] == full["sequences_seen"] == 24
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_stage_time_budget_stops_it_after_a_step(setup, tmp_path):
    from slimtorch.resources import time_budget

    teacher, data, _ = setup
    with time_budget(1e-3) as budget:
        d = run(student_of(teacher), teacher, data, tmp_path, epochs=5).details
    assert d["stop_reason"] == "time_budget" and d["steps"] == 1 and d["sequences_seen"] == 4
    assert budget is not None and "max_stage_seconds" in budget.notes[0]


def test_a_live_teacher_trains_on_the_full_kl(setup, tmp_path):
    teacher, data, _ = setup
    d = run(student_of(teacher), teacher, data, tmp_path, epochs=2, cache_teacher=False, alpha=0.2).details
    assert d["top_k"] is None and d["teacher_cache"] is None and d["alpha"] == 0.2
    assert d["heldout_kl_to_teacher"]["after"] < d["heldout_kl_to_teacher"]["before"]


def test_bad_inputs_get_one_clear_error(setup, tmp_path):
    teacher, data, _ = setup
    student = student_of(teacher)
    with pytest.raises(RecipeError, match=r"top_k is 1000 but the vocabulary has 260 tokens; give at most 260"):
        run(student, teacher, data, tmp_path, tokens={"top_k": 1000})
    with pytest.raises(ValueError, match=r"seq_tokens must be at least 2; got 1"):
        DistillConfig(tokens={"seq_tokens": 1})
    with pytest.raises(ShapeMismatchError, match=r"teacher 0 has a vocabulary of 300 tokens and the student 260"):
        run(student, tiny_lm(teacher.tokenizer, vocab=300), data, tmp_path)
    encoder = build_model("hf:x", {"kind": "encoder", "config": {"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 16,
                                                                  "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                  "intermediate_size": 32}})
    with pytest.raises(RecipeError, match=r"teacher 0 is a Hugging Face encoder model; token-level distillation needs a causal-LM"):
        run(student, encoder, data, tmp_path)
    with pytest.raises(RecipeError, match=r"distill.features is not supported for a causal-LM student"):
        run(student, teacher, data, tmp_path, features="transformer")


def test_the_recipe_section_is_the_python_config(tmp_path):
    from typer.testing import CliRunner

    from slimtorch.cli import app
    from slimtorch.recipe import dump_recipe, load_recipe

    recipe = tmp_path / "r.yaml"
    body = ("name: t\ndata: {source: text}\nteacher: {model: hf:smollm2}\nstages:\n"
            "  - prune: {granularity: layer, criterion: activation, sparsity: 0.1}\n"
            "  - distill: {tokens: {seq_tokens: %s, top_k: 32}, freeze: ['*embed_tokens*']}\n")
    recipe.write_text(body % 64)
    config = load_recipe(recipe).stages[1].config
    assert config == DistillConfig(tokens={"seq_tokens": 64, "top_k": 32}, freeze=["*embed_tokens*"])
    # a copy of the recipe (sweeps, worker processes) leaves T and λ unset: a causal LM still gets its own defaults
    copied = tmp_path / "copy.yaml"
    copied.write_text(dump_recipe(load_recipe(recipe)))
    assert load_recipe(copied).stages[1].config.temperature is None and load_recipe(copied).stages[1].config.alpha is None
    recipe.write_text(body % 1)
    result = CliRunner().invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "line 6: stages[1].distill.tokens.seq_tokens: distill.tokens.seq_tokens must be at least 2; got 1" in result.output


def test_a_causal_lm_without_a_tokenizer_reads_the_text_with_the_datas(setup, tmp_path):
    _, data, _ = setup  # the text source's tokenizer: all-MiniLM-L6-v2's 30,522 word pieces
    config = {"model_type": "llama", "vocab_size": 30522, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True}
    torch.manual_seed(0)
    teacher = build_model("hf:random-llama", {"kind": "causal_lm", "config": config})
    with torch.no_grad():
        teacher.hf.model.norm.weight.mul_(30.0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.hf.model.layers[0].mlp.down_proj.weight.normal_(0, 0.5)
    d = run(student, teacher, data, tmp_path, epochs=2, freeze=["*embed_tokens*"],
            tokens={"seq_tokens": 32, "top_k": 16, "max_sequences": 8}).details
    text = "\n".join(s for s, _ in (data.train[i] for i in range(len(data.train))))
    assert d["train_tokens"] == min(len(data.collate_fn.tokenizer(text, add_special_tokens=False)["input_ids"]), 8 * 32)
    assert d["heldout_kl_to_teacher"]["after"] < d["heldout_kl_to_teacher"]["before"]
