import pytest
from pydantic import ValidationError

from slimtorch.prune import PruneConfig
from slimtorch.prune.config import PruneTargetConfig


@pytest.mark.parametrize("value, hint", [(1.5, "did you mean 0.15"), (50, "did you mean 0.5"), (1.0, "1 would remove every weight"), (-0.1, "weights removed\\.")])
def test_sparsity_out_of_range(value, hint):
    with pytest.raises(ValidationError, match=r"prune.sparsity must be a float in \[0, 1\); got .*" + hint):
        PruneConfig(sparsity=value)


def test_sparsity_message_exact():
    with pytest.raises(ValidationError, match=r"got 1.5. Sparsity is the fraction of weights removed; did you mean 0.15\?"):
        PruneConfig(sparsity=1.5)


def test_n_greater_than_m():
    with pytest.raises(ValidationError, match=r"needs 0 < N < M; got N=4, M=2. Did you mean '2:4'"):
        PruneConfig(granularity="4:2")


@pytest.mark.parametrize("bad", ["2:", "a:4", "2:4:8"])
def test_bad_nm_format(bad):
    with pytest.raises(ValidationError, match="is not an N:M pattern|is unknown"):
        PruneConfig(granularity=bad)


def test_unknown_granularity_suggests():
    with pytest.raises(ValidationError, match="Did you mean 'filter'"):
        PruneConfig(granularity="filtr")


def test_target_needs_exactly_one():
    with pytest.raises(ValidationError, match="exactly one of params, macs, latency_ms"):
        PruneTargetConfig(params=0.5, macs=0.5)


def test_extra_keys_forbidden():
    with pytest.raises(ValidationError, match="sparsty"):
        PruneConfig(sparsty=0.5)


def test_round_trip():
    cfg = PruneConfig(granularity=" 2:4 ", schedule="cubic", layers={"exclude": ["net.1"]})
    assert cfg.granularity == "2:4" and cfg.kind == "mask" and cfg.sparsity == 0.5  # N:M sets it
    assert PruneConfig(**cfg.model_dump()) == cfg


def test_lottery_needs_mask_granularity():
    with pytest.raises(ValidationError, match="lottery works on weight masks"):
        PruneConfig(granularity="filter", lottery={})


def test_an_explicit_sparsity_that_contradicts_n_m_is_refused_and_a_matching_one_is_not():
    with pytest.raises(ValidationError, match=r"prune\.sparsity 0\.5 conflicts with granularity '3:4', which keeps 3 of every 4 "
                                              r"weights \(sparsity 0\.25\); leave sparsity out, or use '2:4' for 0\.5\."):
        PruneConfig(sparsity=0.5, granularity="3:4")
    assert PruneConfig(sparsity=0.5, granularity="2:4").granularity == "2:4"
    assert PruneConfig(granularity="3:4").kind == "mask"  # sparsity left out: N:M decides
