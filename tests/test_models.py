import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn

from initbench.models import FAMILIES, DataShape, build_model


def test_lenet_is_the_docs_net_for_cifar_shapes():
    model = build_model({"name": "lenet"}, DataShape(3, 32, 32, 10))
    assert [n for n, _ in model.named_children()] == ["conv1", "pool", "conv2", "fc1", "fc2", "fc3"]
    assert model.fc1.in_features == 16 * 6 * 6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (1, 16, 4), (3, 64, 100)])
def test_lenet_computes_its_flatten_size(channels, size, classes):
    model = build_model({"name": "lenet"}, DataShape(channels, size, size, classes))
    assert model(torch.zeros(2, channels, size, size)).shape == (2, classes)


def test_lenet_rejects_images_too_small_with_the_fix():
    with pytest.raises(ValueError, match="model.image_size=32"):
        build_model({"name": "lenet"}, DataShape(1, 8, 8, 10))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "selu", "gelu"])
def test_mlp_depth_30_with_every_activation(activation):
    model = build_model({"name": "mlp", "depth": 30, "width": 32, "activation": activation,
                         "batch_norm": activation == "relu"}, DataShape(1, 8, 8, 10))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 31
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_mlp_unknown_activation_lists_valid_ones():
    with pytest.raises(ValueError, match="'swish'.*gelu, leaky_relu, linear, relu, selu, sigmoid, tanh"):
        build_model({"name": "mlp", "activation": "swish"}, DataShape(1, 8, 8, 10))


def test_linear_mlp_is_a_linear_map():
    """activation=linear (Saxe et al. 2014's deep linear net): f(a x + b y) = a f(x) + b f(y) once the
    biases are 0, and the whole net equals the product of its weight matrices."""
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "depth": 5, "width": 16, "activation": "linear"},
                        DataShape(1, 4, 4, 3)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    x, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randn(6, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(model(2 * x - 3 * y), 2 * model(x) - 3 * model(y))
    product = torch.eye(16, dtype=torch.float64)
    for m in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        product = m.weight @ product
    torch.testing.assert_close(model(x), x.flatten(1) @ product.T)


def test_lstm_reads_rows_as_a_sequence():
    model = build_model({"name": "lstm", "hidden_size": 16, "num_layers": 2}, DataShape(1, 28, 28, 10))
    assert model.rnn.input_size == 28 and model.rnn.num_layers == 2
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


class TinyNet(nn.Module):
    """A user's own network: build_model fills in in_features and num_classes from the data."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


def test_user_model_through_target():
    model = build_model({"_target_": "tests.test_models.TinyNet", "name": "tiny", "hidden": 5},
                        DataShape(1, 8, 8, 10))
    assert isinstance(model, TinyNet) and model.body[1].out_features == 5
    assert model.body[1].in_features == 64


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match=f"unknown model 'vgg'; valid: {', '.join(sorted(FAMILIES))}, or "):
        build_model({"name": "vgg"}, DataShape(1, 8, 8, 10))


@pytest.mark.parametrize("target,args", [
    ("subprocess.Popen", lambda marker: {"args": ["touch", str(marker)]}),
    ("os.system", lambda marker: {"command": f"touch {marker}"}),
])
def test_a_model_target_hydra_blocks_is_refused_and_runs_nothing(target, args, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(InstantiationException, match=f"Target '{target}' is blocklisted"):
        build_model({"_target_": target, **args(marker)}, DataShape(1, 8, 8, 10))
    assert not marker.exists()


class Configured(nn.Module):
    """A user's model that takes a nested mapping as it is written in its config."""

    def __init__(self, options: dict, num_classes: int):
        super().__init__()
        self.options = options
        self.fc = nn.Linear(1, num_classes)


def test_user_model_keeps_nested_args_as_plain_data():
    model = build_model({"_target_": "tests.test_models.Configured", "options": {"_target_": "os.getcwd", "k": [1]}},
                        DataShape(1, 8, 8, 10))
    assert model.options == {"_target_": "os.getcwd", "k": [1]} and type(model.options) is dict
