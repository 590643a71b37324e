"""The layer graph (``LayerGraph.from_module``): features counted by hand, fingerprints, and the
models it refuses by name.
"""

import pytest
import torch
from torch import nn

from jpq_env.core.graph import GraphError, LayerGraph
from tests.nets import PlainNet, ResidualNet


def _graph(model: nn.Module, shape: tuple[int, ...]) -> LayerGraph:
    return LayerGraph.from_module(model, torch.randn(*shape))


def test_plain_net_features_match_hand_counts():
    g = _graph(PlainNet(), (1, 3, 8, 8))
    assert g.names == ("conv1", "conv2", "fc1", "fc2")
    c1, c2, f1, f2 = g.layers
    assert (c1.kind, c1.in_channels, c1.out_channels, c1.kernel, c1.groups) == (
        "conv",
        3,
        8,
        (3, 3),
        1,
    )
    assert (c1.in_hw, c1.out_hw, c1.params, c1.weight_params) == (
        (8, 8),
        (8, 8),
        8 * 3 * 9,
        8 * 3 * 9,
    )
    assert c1.macs == 8 * 3 * 9 * 64
    assert c2.params == 12 * 8 * 9 + 12 and c2.macs == 12 * 8 * 9 * 64
    assert (f1.kind, f1.in_channels, f1.out_channels, f1.macs) == ("linear", 192, 16, 192 * 16)
    assert f2.macs == 16 * 5 and f2.params == 16 * 5 + 5
    assert g.total_macs == c1.macs + c2.macs + f1.macs + f2.macs
    assert g.input_layers == {0} and g.output_layers == {3}


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


def test_untraceable_model_error_names_the_module():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sequential(nn.ReLU(), _Branchy()))
    with pytest.raises(GraphError, match=r"'1\.1'") as err:
        _graph(model, (1, 1, 2, 2))
    assert "trac" in str(err.value)


def test_model_without_compressible_layers_is_refused():
    with pytest.raises(GraphError, match="no compressible layer"):
        _graph(nn.Sequential(nn.ReLU(), nn.Flatten()), (1, 3, 2, 2))


def test_shared_layer_is_refused():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    with pytest.raises(GraphError, match="'conv' is called more than once"):
        _graph(Shared(), (1, 2, 2, 2))


def test_wrong_example_input_is_a_clear_error():
    with pytest.raises(GraphError, match=r"example input of shape \(1, 5, 8, 8\)"):
        _graph(PlainNet(), (1, 5, 8, 8))


def test_building_the_graph_leaves_the_model_untouched():
    model = PlainNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _graph(model, (4, 3, 8, 8))
    assert model.training and model.bn1.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fingerprint_tells_architectures_apart():
    a = _graph(PlainNet(), (1, 3, 8, 8))
    assert a.fingerprint == _graph(PlainNet(), (1, 3, 8, 8)).fingerprint
    assert a.fingerprint != _graph(ResidualNet(), (1, 3, 8, 8)).fingerprint


def test_layers_behind_softmax_still_produce_the_output():
    class Logsoft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.flatten(torch.relu(self.conv(x)), 1)
            return torch.log_softmax(self.fc(h), dim=1)

    assert _graph(Logsoft(), (1, 1, 8, 8)).output_layers == {1}


def test_linear_on_a_sequence_is_refused_by_name():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.head = nn.Linear(36, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).flatten(2))

    with pytest.raises(GraphError, match=r"'head' is an nn.Linear applied to a 3-D input"):
        _graph(Tokens(), (1, 1, 8, 8))
