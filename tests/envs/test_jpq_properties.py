"""Property-based tests: invariants over random networks, random policies and random actions.

Networks are drawn by a hypothesis strategy: a stack of blocks (plain conv, depthwise conv,
residual pair with an identity add, each with or without BatchNorm), global pooling and one or two
linear layers. On them:

- a policy's BOPs and size never exceed FP32's, and lowering any weight or activation width, or
  pruning one more kernel, never raises either (monotonicity);
- the environment never raises on an action inside its action space (JPQWeights-v0 style: one fixed
  activation width; JPQWeightsActs-v0 style: a set), every episode ends within [0, FP32] costs
  (within budget under the forward wall), the pruned kernels are exactly zero in the compressed
  working copy, and the user's model is bitwise the original after every episode.

Few examples each and ``deadline=None``: a fast fuzz in CI, not an exhaustive search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env import LayerGraph, LayerPolicy, Policy, Task, measure
from jpq_env.envs import JPQEnv

PROPERTY = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WIDTHS = [0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 32]


@dataclass(frozen=True)
class NetSpec:
    """A small network: input channels, blocks as (kind, out channels, batchnorm), head."""

    in_channels: int
    hw: int
    blocks: tuple[tuple[str, int, bool], ...]
    hidden: int  # 0: a single linear layer
    classes: int


class _Residual(nn.Module):
    def __init__(self, c: int, bn: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.b(F.relu(self.a(x)))))


class GeneratedNet(nn.Module):
    """The network a ``NetSpec`` describes."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c = spec.in_channels
        for kind, width, bn in spec.blocks:
            if kind == "res":
                blocks.append(_Residual(c, bn))
                continue
            out, groups = (c, c) if kind == "dw" else (width, 1)
            conv = nn.Conv2d(c, out, 3, padding=1, groups=groups)
            blocks.append(nn.Sequential(conv, nn.BatchNorm2d(out) if bn else nn.Identity()))
            c = out
        self.blocks = nn.ModuleList(blocks)
        head: list[nn.Module] = [nn.Linear(c, spec.hidden or spec.classes)]
        if spec.hidden:
            head += [nn.ReLU(), nn.Linear(spec.hidden, spec.classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.relu(block(x))
        return self.head(x.mean((2, 3)))


@st.composite
def net_specs(draw: st.DrawFn) -> NetSpec:
    block = st.tuples(st.sampled_from(["conv", "dw", "res"]), st.integers(1, 6), st.booleans())
    return NetSpec(
        in_channels=draw(st.integers(1, 3)),
        hw=draw(st.sampled_from([4, 6])),
        blocks=tuple(draw(st.lists(block, min_size=1, max_size=4))),
        hidden=draw(st.sampled_from([0, 5])),
        classes=draw(st.integers(2, 4)),
    )


def build(spec: NetSpec, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = GeneratedNet(spec)
    for m in model.modules():  # non-trivial BatchNorm statistics, so recalibration changes them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(1, spec.in_channels, spec.hw, spec.hw)


def task_of(spec: NetSpec, seed: int = 0) -> Task:
    model, example = build(spec, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, spec.in_channels, spec.hw, spec.hw, generator=g)
    data = TensorDataset(x, torch.randint(0, spec.classes, (12,), generator=g))
    return Task("generated", model, example, data, data, data, data, spec.classes)


@st.composite
def policies(draw: st.DrawFn, graph: LayerGraph) -> Policy:
    layers = []
    for info in graph.layers:
        widths = WIDTHS[1:] if info.index in graph.output_layers else WIDTHS
        bits = draw(st.lists(st.sampled_from(widths), min_size=info.out_channels,
                             max_size=info.out_channels))  # fmt: skip
        layers.append(LayerPolicy(info.name, bits, draw(st.sampled_from(WIDTHS[1:]))))
    return Policy(tuple(layers), graph.fingerprint)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].reshape(-1), b[k].reshape(-1)) for k in a
    )


def test_generated_nets_cover_residual_and_depthwise_layers():
    spec = NetSpec(2, 4, (("conv", 4, True), ("dw", 0, False), ("res", 0, True)), 5, 3)
    model, example = build(spec)
    graph = LayerGraph.from_module(model, example)
    # conv, depthwise, two residual convs, two linear layers
    assert len(graph) == 6 and graph.layers[1].groups == 4
    assert model(example).shape == (1, 3)


@PROPERTY
@given(data=st.data(), spec=net_specs())
def test_costs_are_bounded_by_fp32_and_monotone(data: st.DataObject, spec: NetSpec):
    model, example = build(spec)
    graph = LayerGraph.from_module(model, example)
    policy = data.draw(policies(graph), label="policy")
    cost = measure(graph, policy)
    assert 0 <= cost.bops <= cost.bops_fp32 and 0 <= cost.size_bits <= cost.size_bits_fp32
    assert cost.macs <= cost.macs_fp32
    # One step lower somewhere: a kernel's width (0 = one more pruned kernel) or an input width.
    layer = data.draw(st.integers(0, len(graph) - 1), label="layer")
    lp = policy.layers[layer]
    bits, act = lp.bits.copy(), lp.act_bits
    if data.draw(st.booleans(), label="lower the activation width"):
        act = data.draw(st.sampled_from([w for w in WIDTHS[1:] if w <= act]), label="act")
    else:
        k = data.draw(st.integers(0, len(bits) - 1), label="kernel")
        floor = 1 if layer in graph.output_layers else 0
        bits[k] = data.draw(st.sampled_from([w for w in WIDTHS if floor <= w <= bits[k]]))
    lower = Policy(
        tuple(LayerPolicy(p.name, bits, act) if i == layer else p
              for i, p in enumerate(policy.layers)),
        policy.fingerprint,
    )  # fmt: skip
    after = measure(graph, lower)
    assert after.bops <= cost.bops and after.size_bits <= cost.size_bits
    assert after.macs <= cost.macs


def _episode_env(data: st.DataObject, spec: NetSpec) -> JPQEnv:
    act_bits = data.draw(
        st.one_of(
            st.sampled_from([8, 6, 4]),  # JPQWeights-v0: one width
            st.lists(st.sampled_from([2, 3, 4, 6, 8]), min_size=2, max_size=4, unique=True),
        ),
        label="act_bits",
    )
    return JPQEnv(
        task=task_of(spec),
        budget_bops=data.draw(st.sampled_from([1 / 4, 1 / 16, 1 / 64, 1.0]), label="budget"),
        bits=data.draw(
            st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 16]), min_size=1, max_size=4, unique=True),
            label="bits",
        ),
        act_bits=act_bits,
        max_sparsity=data.draw(st.sampled_from([0.0, 0.5, 0.9]), label="max_sparsity"),
        channel_groups=data.draw(st.sampled_from([0, 1, 3]), label="channel_groups"),
        enforcement=data.draw(st.sampled_from(["wall", "lowering", "none"]), label="enforcement"),
        input_bits=data.draw(st.sampled_from([8, None]), label="input_bits"),
    )


@PROPERTY
@given(data=st.data(), spec=net_specs())
def test_random_episodes_never_raise_and_never_touch_the_model(data: st.DataObject, spec: NetSpec):
    try:
        env = _episode_env(data, spec)
    except ValueError as exc:  # an infeasible budget for this draw is refused up front
        assert "infeasible budget" in str(exc)
        return
    original = _state(env.task.model)
    # Scored once up front (lazily it would be scored after the first episode's policy, leaving
    # the FP32 policy in the working copy): the copy then holds each episode's last policy.
    assert 0.0 <= env.evaluator.fp32_accuracy <= 1.0
    box = env.action_space
    actions = st.lists(st.floats(-1.0, 1.0, width=32), min_size=box.shape[0],
                       max_size=box.shape[0])  # fmt: skip
    for episode in range(2):
        env.reset(seed=episode)
        done, steps = False, 0
        while not done:
            action = np.asarray(data.draw(actions, label="action"), dtype=np.float32)
            assert box.contains(action)
            _, reward, done, truncated, info = env.step(action)
            steps += 1
            assert np.isfinite(reward) and not truncated
        assert steps == 2 * env.num_layers
        assert 0.0 <= info["bops_ratio"] <= 1.0 and 0.0 <= info["size_ratio"] <= 1.0
        if env.enforcement != "none":
            assert info["budget_met"]
        # The working copy holds the last policy: its pruned kernels are exactly zero.
        policy = env.last_policy
        assert policy is not None
        working = env.evaluator.compressed.module  # type: ignore[attr-defined]
        for lp in policy.layers:
            weight = working.get_submodule(lp.name).weight
            assert torch.count_nonzero(weight[torch.from_numpy(lp.bits == 0)]) == 0
        assert _bitwise_equal(_state(env.task.model), original)
    env.evaluator.compressed.restore()  # type: ignore[attr-defined]
    assert _bitwise_equal(_state(env.evaluator.compressed.module), original)  # type: ignore[attr-defined]


@pytest.mark.parametrize("env_id", ["jpq_env/JPQWeights-v0", "jpq_env/JPQWeightsActs-v0"])
def test_sampled_actions_on_the_registered_envs_never_raise(env_id: str):
    import gymnasium as gym

    env = gym.make(env_id).unwrapped
    original = _state(env.task.model)
    env.action_space.seed(0)
    for seed in range(3):
        env.reset(seed=seed)
        done = False
        while not done:
            done = env.step(env.action_space.sample())[2]
    assert _bitwise_equal(_state(env.task.model), original)
