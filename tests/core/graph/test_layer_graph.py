import numpy as np
import pytest
import torch
from torch import nn

from jpq_env.core.graph import GraphError, LayerGraph
from tests.nets import ConcatNet, PlainNet, ResidualNet, SeparableNet


def _graph(model: nn.Module, shape: tuple[int, ...]) -> LayerGraph:
    return LayerGraph.from_module(model, torch.randn(*shape))


def _producers(graph: LayerGraph, index: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {layer: (pos, ch) for layer, pos, ch in graph.sources[index].producers}


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


def test_flatten_maps_each_channel_to_its_spatial_block():
    g = _graph(PlainNet(), (1, 3, 8, 8))
    ((pos, ch),) = _producers(g, 2).values()
    # conv2's channel c becomes features c*16 .. c*16+15 after 2x2 pooling of an 8x8 map.
    expected = np.repeat(np.arange(12), 16)
    order = np.argsort(pos)
    assert np.array_equal(pos[order], np.arange(192))
    assert np.array_equal(ch[order], expected)
    assert not g.sources[2].external.any()


def test_residual_add_is_the_union_of_both_producers():
    g = _graph(ResidualNet(), (1, 3, 8, 8))
    assert g.names == ("stem", "a", "b", "head", "fc")
    assert set(_producers(g, 3)) == {0, 2}  # head reads stem (shortcut) + b
    kept = [np.ones(x.out_channels, bool) for x in g.layers]
    kept[0][[1, 2, 5]] = False  # stem drops 1, 2, 5
    kept[2][[2, 5, 7]] = False  # b drops 2, 5, 7
    live = g.liveness(kept)
    # head's input channel survives if stem or b keeps it: only 2 and 5 die.
    assert np.flatnonzero(~live.alive_in[3]).tolist() == [2, 5]
    assert np.flatnonzero(~live.alive_in[1]).tolist() == [1, 2, 5]  # a reads stem only
    assert np.flatnonzero(~live.bn_alive["bn0"]).tolist() == [1, 2, 5]
    assert np.flatnonzero(~live.bn_alive["bnb"]).tolist() == [2, 5, 7]


def test_depthwise_channels_follow_their_input_and_groups_die_together():
    g = _graph(SeparableNet(), (1, 3, 8, 8))
    _, dw, _, grouped, _ = g.layers
    assert dw.depthwise and dw.groups == 8 and dw.out_hw == (4, 4)
    assert dw.macs == 8 * 1 * 9 * 16
    assert grouped.groups == 2 and grouped.macs == 6 * 6 * 9 * 16 and not grouped.depthwise
    kept = [np.ones(x.out_channels, bool) for x in g.layers]
    kept[0][[0, 3]] = False
    kept[2][:6] = False  # every input of the grouped conv's first group
    live = g.liveness(kept)
    assert np.flatnonzero(~live.alive_out[1]).tolist() == [0, 3]  # dw follows conv
    assert np.flatnonzero(~live.bn_alive["dwbn"]).tolist() == [0, 3]
    assert np.flatnonzero(~live.alive_out[3]).tolist() == [0, 1, 2]  # group 0 has no input
    assert np.flatnonzero(~live.alive_in[4]).tolist() == [0, 1, 2]  # x.mean((2, 3)) keeps channels


def test_concat_offsets_the_second_operand():
    g = _graph(ConcatNet(), (1, 3, 4, 4))
    prods = _producers(g, 2)
    assert prods[0][0].tolist() == [0, 1, 2, 3] and prods[1][0].tolist() == [4, 5, 6, 7, 8, 9]
    assert prods[1][1].tolist() == list(range(6))
    # x.view(N, -1) after pooling to 2x2 is a flatten: fc reads 4 features per mix channel.
    ((pos, ch),) = _producers(g, 3).values()
    assert sorted(zip(pos.tolist(), ch.tolist(), strict=True)) == [(p, p // 4) for p in range(20)]


def test_network_input_and_unknown_ops_are_external():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 4, 1)
            self.c2 = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(torch.sigmoid(self.c1(x)))  # sigmoid(0) != 0: cannot see through

    g = _graph(Scaled(), (1, 1, 2, 2))
    assert g.sources[0].external.all() and g.sources[1].external.all()
    assert not g.sources[1].producers


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


def test_the_core_imports_nothing_from_the_layers_above_it():
    """jpq_env.core (policy, costs, graph) is the bottom layer: data flows one way, up from it."""
    import ast
    from pathlib import Path

    import jpq_env.core

    above = ("jpq_env.proxy", "jpq_env.export", "jpq_env.envs", "jpq_env.tasks", "jpq_agents")
    above += ("gymnasium",)
    found = []
    for path in sorted(Path(jpq_env.core.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.name}: {name}"
                for name in names
                if any(name == top or name.startswith(f"{top}.") for top in above)
            ]
    assert not found
