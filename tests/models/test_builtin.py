import pytest
import torch

from slimtorch.errors import ModelRefError
from slimtorch.models import MODELS, build_model

SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "resnet": (3, 16, 16)}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_builtin_forward_backward_finite(name):
    model = build_model(name, {}, input_shape=SHAPES[name], num_classes=7)
    x = torch.randn(4, *SHAPES[name])
    out = model(x)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.slimtorch_spec["ref"] == name


def test_cnn_accepts_1d_signals():
    model = build_model("cnn", {"channels": [8, 8]}, input_shape=(1, 40), num_classes=10)
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_user_factory_and_errors():
    model = build_model("torch.nn:Identity")
    assert isinstance(model, torch.nn.Identity)
    with pytest.raises(ModelRefError, match="returned OrderedDict, not a torch.nn.Module"):
        build_model("collections:OrderedDict")
    with pytest.raises(ModelRefError, match=r"model factory 'torch.nn:ReLU' cannot take args \['width'\]"):
        build_model("torch.nn:ReLU", {"width": 3})
    with pytest.raises(ModelRefError, match="unknown model reference 'mpl'. Did you mean 'mlp'"):
        build_model("mpl")
    with pytest.raises(ModelRefError, match="model 'mlp': .*unexpected keyword argument 'widths'"):
        build_model("mlp", {"widths": [3]})


def test_hf_tiny_random_encoder_wrapper():
    cfg = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 64, "vocab_size": 100}
    model = build_model("hf:tiny", {"kind": "encoder", "config": cfg})
    ids = torch.randint(0, 100, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    emb = model(input_ids=ids, attention_mask=mask)
    assert emb.shape == (3, 32)
    # mean pooling ignores padded positions
    alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])
    assert torch.allclose(emb[:1], alone, atol=1e-5)


def test_hf_missing_dir_is_clear(tmp_path):
    with pytest.raises(ModelRefError, match="Hugging Face model directory .* does not exist"):
        build_model(f"hf:{tmp_path}/nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRefError, match="cannot load Hugging Face model"):
        build_model(f"hf:{tmp_path}/empty")
    with pytest.raises(ModelRefError, match="is a pickle file; slimtorch never unpickles models"):
        build_model(f"{tmp_path}/model.pt")


def test_torchvision_without_extra_is_clear():
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed")
    except Exception:  # noqa: BLE001, S110 - absent or built for another torch: both are "no torchvision" here
        pass
    from slimtorch.errors import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"pip install 'slimtorch\[vision\]'"):
        build_model("torchvision:resnet18")
