"""Every registered model: output shape, finite values, a gradient for every parameter (2D and 3D)."""

import inspect

import pytest
import torch

from noduleflow.errors import ConfigError
from noduleflow.models import create_model, input_size_of, list_models, model_entry

CASES = [(name, dims) for name in list_models() for dims in sorted(model_entry(name).example_shapes)]


def _build(name: str, dims: int, **kwargs):
    if "spatial_dims" in inspect.signature(model_entry(name).build).parameters:
        kwargs["spatial_dims"] = dims
    return create_model(name, num_classes=3, **kwargs)


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_forward_backward(name, dims):
    torch.manual_seed(0)
    sample = model_entry(name).example_shapes[dims]
    model = _build(name, dims)
    x = torch.randn(2, *sample)  # (B, C, *S)
    out = model(x)
    expected = (2, 3, *sample[1:]) if model_entry(name).dense else (2, 3)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


def test_registry_lists_all_architectures():
    assert sorted(list_models()) == ["digits_cnn", "nodule_classifier", "nodule_net", "unet"]


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError) as err:
        create_model("resnet9000")
    assert "resnet9000" in str(err.value)
    for name in list_models():
        assert name in str(err.value)


def test_unknown_keyword_is_a_config_error():
    with pytest.raises(ConfigError, match="digits_cnn"):
        create_model("digits_cnn", kernel=5)


def test_nodule_classifier_has_the_book_shape():
    model = create_model("nodule_classifier")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3, 3) for c in convs)
    assert isinstance(model.tail, torch.nn.BatchNorm3d)
    assert model.head.in_features == 64 * 2 * 3 * 3 and model.head.out_features == 2
    assert [n for n, _ in model.named_children()] == ["tail", "block1", "block2", "block3", "block4", "head"]


def test_nodule_net_strides_to_a_flattened_head_and_reports_its_patch_size():
    model = create_model("nodule_net")
    assert input_size_of(model) == (16, 32, 32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 64, 64, 128, 128]
    assert [c.stride for c in convs].count((2, 2, 2)) == 3
    assert model.head.in_features == 128 * 2 * 4 * 4  # position kept: what lies at the centre matters
    assert [n for n, _ in model.named_children()] == ["tail", "stem", "stage1", "stage2", "stage3", "head"]


def test_nodule_net_tells_a_centred_blob_from_an_off_centre_one():
    """The reason for the flattened head: the same blob, centred or off centre, is a different answer."""
    torch.manual_seed(0)
    model = create_model("nodule_net", width=4, input_size=(8, 16, 16), depth=3)
    x = -torch.ones(32, 1, 8, 16, 16)
    x[:16, :, 3:5, 7:9, 7:9] = 1.0  # centred blob: label 1
    x[16:, :, 1:3, 2:4, 2:4] = 1.0  # off-centre blob: label 0
    y = torch.tensor([1] * 16 + [0] * 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).all()


def test_input_size_of_a_model_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match="input_size"):
        input_size_of(create_model("digits_cnn"))


def test_classifier_rejects_an_input_size_the_blocks_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        create_model("nodule_classifier", input_size=(30, 48, 48))


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_keeps_the_input_size_and_refuses_odd_sizes(dims):
    model = create_model("unet", spatial_dims=dims, depth=3, width=4, num_classes=2)
    size = (8, 16, 12)[-dims:]
    assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 1, *(s + 2 for s in size)))
