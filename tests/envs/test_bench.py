"""JPQ-Bench: the surrogate's features, ensemble and file, and the bench environment.

A small digits bench is fitted here on policies the real proxy scored (module-scoped): the bench
environment must be the real problem (same spaces, decisions, costs and observations for the same
actions) with the surrogate's scores, and a policy found on it must mean the same kernels on the
real task.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from jpq_env import Policy
from jpq_env.envs import JPQEnv
from jpq_env.envs.bench import JPQBenchEnv, build_bench
from jpq_env.errors import ArgumentError, PolicyError
from jpq_env.proxy.bench import (
    LAYER_FEATURES,
    BenchEvaluator,
    BenchModel,
    Ensemble,
    TreeEnsemble,
    bench_names,
    bench_task,
    load_ensemble,
    policy_features,
)
from tests.episodes import ACTS, episode_actions, rollout


@pytest.fixture(scope="module")
def real(acts_env: JPQEnv) -> JPQEnv:
    """The real problem of the bench: JPQWeightsActs-v0 on digits at 1/64."""
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 64, evaluator=acts_env.evaluator)


@pytest.fixture(scope="module")
def scored(real: JPQEnv) -> tuple[list[Policy], list[float], list[float]]:
    """40 policies of random episodes, with the real proxy's held-out score and test top-1."""
    policies, val, test = [], [], []
    for seed in range(40):
        trace = rollout(real, episode_actions(real, seed), seed=seed)
        assert real.last_policy is not None
        policies.append(real.last_policy)
        val.append(trace[-1][-1]["accuracy"])
        test.append(real.evaluator.test_accuracy(real.last_policy))
    return policies, val, test


@pytest.fixture(scope="module")
def bench_file(real: JPQEnv, scored, tmp_path_factory) -> str:
    policies, val, test = scored
    model = build_bench(real, policies, val, test=test, epochs=150, seed=0)
    path = tmp_path_factory.mktemp("bench") / "digits.npz"
    model.save(path)
    return str(path)


# ---------------------------------------------------------------- features and the ensemble


def test_features_are_the_layers_decisions_and_the_tables_kl(real: JPQEnv, scored):
    table = real.sensitivity or real._measure_sensitivity("l1", True)
    policy = scored[0][3]
    x = policy_features([policy], table)[0]
    per = len(LAYER_FEATURES)
    assert x.shape == (len(policy.layers) * per + 1,)
    total = 0.0
    for i, lp in enumerate(policy.layers):
        row = dict(zip(LAYER_FEATURES, x[i * per : (i + 1) * per], strict=True))
        kept = lp.bits[lp.bits > 0]
        assert row["sparsity"] == pytest.approx(np.mean(lp.bits == 0))
        assert row["mean_bits"] == pytest.approx(kept.mean() / 8 if kept.size else 0.0)
        assert row["share_w4"] == pytest.approx(np.mean(lp.bits == 4))
        assert row["share_w5-6"] == pytest.approx(np.mean((lp.bits == 5) | (lp.bits == 6)))
        assert row["act_bits"] == pytest.approx(min(lp.act_bits, 32) / 8)
        assert row["act_noise"] == pytest.approx(2.0 ** -min(lp.act_bits, 32))
        kl = table.contribution(i, lp.bits, lp.act_bits)
        assert row["log_kl"] == pytest.approx(np.log(kl + 1e-6))
        total += kl
    assert x[-1] == pytest.approx(np.log(total + 1e-6))


def test_ensemble_learns_a_function_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = 0.5 * x[:, 0] - 0.2 * x[:, 1] ** 2 + 0.1 * rng.normal(size=300)
    a = Ensemble.fit(x[:250], y[:250], epochs=300, seed=1, members=4)
    b = Ensemble.fit(x[:250], y[:250], epochs=300, seed=1, members=4)
    mean, std = a.predict(x[250:])
    truth = 0.5 * x[250:, 0] - 0.2 * x[250:, 1] ** 2
    assert np.corrcoef(mean, truth)[0, 1] > 0.9  # learned, on rows it never saw
    assert np.abs(mean - truth).mean() < 0.5 * np.abs(truth - truth.mean()).mean()
    np.testing.assert_array_equal(mean, b.predict(x[250:])[0])  # same seed, same numbers
    assert (std > 0).all()  # bootstrap members disagree somewhere
    members = a.predict_members(x[250:])
    np.testing.assert_allclose(members.mean(0), mean)


def test_logit_ensemble_stays_inside_0_1_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    y = 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1])))  # shares in (0, 1), as accuracies are
    ens = Ensemble.fit(x[:150], y[:150], epochs=300, seed=0, members=3, logit=True)
    members = ens.predict_members(x[150:] * 5)  # far outside the data: still shares
    assert ((members > 0) & (members < 1)).all()
    assert np.corrcoef(ens.predict(x[150:])[0], y[150:])[0, 1] > 0.9
    np.savez(tmp_path / "e.npz", **ens.arrays("val"))
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        again = Ensemble.from_arrays(data, "val")
    assert again.logit
    np.testing.assert_array_equal(again.predict_members(x), ens.predict_members(x))


def test_ensemble_refuses_too_few_rows():
    with pytest.raises(ArgumentError, match="n >= 2"):
        Ensemble.fit(np.zeros((1, 3)), np.zeros(1))


def test_tree_ensemble_walks_its_trees_as_scikit_learn_does(tmp_path):
    """Member 0 is fitted on the data as it is: its numpy walk must equal scikit-learn's own
    prediction of the same model; the arrays round-trip through a pickle-free file."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 6))
    y = 1 / (1 + np.exp(-(x[:, 0] * x[:, 1] + np.sin(x[:, 2]))))
    ens = TreeEnsemble.fit(x, y, members=3, seed=5, logit=True)
    z = np.log(y / (1 - y))
    ref = HistGradientBoostingRegressor(random_state=5).fit(x, z)
    probe = rng.normal(size=(60, 6)) * 2  # also outside the data's range
    members = ens.predict_members(probe)
    np.testing.assert_allclose(members[0], 1 / (1 + np.exp(-ref.predict(probe))), rtol=1e-12)
    assert ((members > 0) & (members < 1)).all()
    mean, std = ens.predict(probe)
    np.testing.assert_allclose(mean, members.mean(0))
    assert (std > 0).any()  # bootstrap members disagree somewhere
    again = TreeEnsemble.fit(x, y, members=3, seed=5, logit=True)  # deterministic
    np.testing.assert_array_equal(again.predict_members(probe), members)
    np.savez(tmp_path / "t.npz", **ens.arrays("val"))
    with np.load(tmp_path / "t.npz", allow_pickle=False) as data:
        loaded = load_ensemble(data, "val")
    assert isinstance(loaded, TreeEnsemble)
    np.testing.assert_array_equal(loaded.predict_members(probe), members)


def test_tree_ensemble_refuses_bad_rows_and_a_corrupt_table(tmp_path):
    with pytest.raises(ArgumentError, match="finite"):
        TreeEnsemble.fit(np.full((5, 2), np.nan), np.zeros(5))
    ens = TreeEnsemble.fit(np.arange(60.0).reshape(30, 2), np.arange(30.0), members=1)
    arrays = ens.arrays("val")
    arrays["val/trees/left"] = arrays["val/trees/left"] + 10**6  # points outside the table
    np.savez(tmp_path / "t.npz", **arrays)
    with (
        np.load(tmp_path / "t.npz", allow_pickle=False) as data,
        pytest.raises(ArgumentError, match="left index is outside"),
    ):
        load_ensemble(data, "val")


# ---------------------------------------------------------------- the bench file


def test_bench_file_round_trips_without_pickle(bench_file: str, scored):
    model = BenchModel.load(bench_file)
    with np.load(bench_file, allow_pickle=False) as data:  # arrays and JSON only
        meta = json.loads(bytes(data["meta"]).decode())
    assert meta["schema"] == 2 and meta["task"] == "digits"
    assert isinstance(model.val, TreeEnsemble)  # build_bench's default surrogate
    again = BenchModel.load(bench_file)
    policies = scored[0][:5]
    for key, values in model.predict(policies).items():
        np.testing.assert_array_equal(values, again.predict(policies)[key])
    assert model.digest() == again.digest()


def test_bench_fits_the_real_scores_it_was_given(bench_file: str, scored):
    from scipy.stats import kendalltau

    policies, val, _ = scored
    pred = BenchModel.load(bench_file).predict(policies)["val"]
    assert kendalltau(pred, val).statistic > 0.7
    assert np.abs(pred - np.array(val)).mean() < 0.05


def test_bench_files_are_checked(tmp_path, bench_file: str):
    with pytest.raises(ArgumentError, match="does not exist"):
        BenchModel.load(tmp_path / "missing.npz")
    with pytest.raises(ArgumentError, match="no bench named 'nope'"):
        BenchModel.load("nope")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArgumentError, match="not a bench file"):
        BenchModel.load(bad)
    model = BenchModel.load(bench_file)
    model.meta["schema"] = 99
    arrays = dict(np.load(bench_file, allow_pickle=False))
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["schema"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    other = tmp_path / "future.npz"
    np.savez(other, **arrays)
    with pytest.raises(ArgumentError, match="schema 99"):
        BenchModel.load(other)


def test_shipped_benches_rebuild_their_graph():
    for name in bench_names():
        model = BenchModel.load(name)
        task = bench_task(model)  # raises if the architecture's graph differs
        assert task.name == f"bench:{name}"
        ranking = model.meta["importance"]["order"]
        for order, layer in zip(ranking, model.meta["names"], strict=True):
            n = task.model.get_submodule(layer).weight.shape[0]
            assert sorted(order) == list(range(n))  # a ranking of the layer's kernels


def test_bench_task_has_the_real_graph(bench_file: str, real: JPQEnv):
    task = bench_task(BenchModel.load(bench_file))
    from jpq_env import LayerGraph

    assert LayerGraph.from_module(task.model, task.example_input).fingerprint == (
        real.graph.fingerprint
    )
    assert len(task.val) == 0  # no data: every score is predicted


def test_evaluator_predicts_and_refuses_other_models(bench_file: str, scored):
    model = BenchModel.load(bench_file)
    evaluator = BenchEvaluator(model)
    policy = scored[0][0]
    score = evaluator.accuracy(policy)
    assert score == pytest.approx(float(np.clip(model.predict([policy])["val"][0], 0, 1)))
    assert evaluator.prediction.val_std >= 0 and evaluator.prediction.test is not None
    assert evaluator.test_accuracy(None) == model.meta["fp32"]["test"]
    assert evaluator.stats.evaluations == 1
    alien = Policy(policy.layers, "another-model")
    with pytest.raises(PolicyError, match="another model"):
        evaluator.accuracy(alien)


# ---------------------------------------------------------------- the environment


def test_bench_env_is_the_real_problem(bench_file: str, real: JPQEnv):
    bench = JPQBenchEnv(bench=bench_file, budget_bops=1 / 64)
    assert bench.action_space == real.action_space
    assert bench.observation_space == real.observation_space
    for seed in (0, 7):
        actions = episode_actions(real, 100 + seed)
        a = rollout(real, actions, seed=seed)
        b = rollout(bench, actions, seed=seed)
        for step_a, step_b in zip(a[:-1], b[:-1], strict=True):
            np.testing.assert_array_equal(step_a[0], step_b[0])  # same observations
        assert bench.last_policy.key() == real.last_policy.key()  # same kernels, same widths
        info_a, info_b = a[-1][-1], b[-1][-1]
        for key in ("bops_ratio", "size_ratio", "budget_met", "accuracy_fp32"):
            assert info_b[key] == info_a[key]
        assert info_b["bench"] == "digits"
        assert {"accuracy_test", "accuracy_std", "accuracy_test_std"} <= set(info_b)
        model = BenchModel.load(bench_file)
        assert info_b["accuracy"] == pytest.approx(
            float(np.clip(model.predict([bench.last_policy])["val"][0], 0, 1))
        )


def test_bench_env_is_deterministic(bench_file: str):
    env = JPQBenchEnv(bench=bench_file, budget_bops=1 / 64)
    actions = episode_actions(env, 3)
    first = rollout(env, actions)[-1]
    second = rollout(env, actions)[-1]
    assert first[1] == second[1] and first[-1]["accuracy"] == second[-1]["accuracy"]


def test_bench_env_sensitivity_observations_are_the_real_ones(bench_file: str, real: JPQEnv):
    sens = JPQEnv(act_bits=ACTS, budget_bops=1 / 64, evaluator=real.evaluator, sensitivity=True)
    bench = JPQBenchEnv(bench=bench_file, budget_bops=1 / 64, sensitivity=True)
    actions = episode_actions(sens, 5)
    for a, b in zip(rollout(sens, actions)[:-1], rollout(bench, actions)[:-1], strict=True):
        np.testing.assert_array_equal(a[0], b[0])


def test_bench_env_refuses_settings_its_data_did_not_have(bench_file: str):
    with pytest.raises(ArgumentError, match=r"bits=.*got"):
        JPQBenchEnv(bench=bench_file, bits=[4, 8])
    with pytest.raises(ArgumentError, match="importance"):
        JPQBenchEnv(bench=bench_file, importance="l2")
    with pytest.raises(ArgumentError, match="takes no \\['task'\\]"):
        JPQBenchEnv(bench=bench_file, task="digits")
    JPQBenchEnv(bench=bench_file, act_bits=ACTS, budget_bops=1 / 32)  # the data's own: fine


def test_bench_ids_are_registered_and_run_searches(bench_file: str, tmp_path):
    import jpq_env  # noqa: F401
    from jpq_agents.run import env_arguments, run_search

    assert "jpq_env/JPQBench-v0" in gym.registry
    assert {"bench", "budget_bops", "reward"} <= env_arguments("jpq_env/JPQBench-v0")
    env = gym.make("jpq_env/JPQBench-v0", bench=bench_file, budget_bops=1 / 64)
    assert isinstance(env.unwrapped, JPQBenchEnv)
    summary = run_search(
        "random",
        tmp_path / "run",
        6,
        env_id="jpq_env/JPQBench-v0",
        env_kwargs={"bench": bench_file, "budget_bops": 1 / 64},
        progress=False,
    )
    assert summary["evaluations"] == 6
    best = summary["best"]
    model = BenchModel.load(bench_file)
    policy = Policy.load(tmp_path / "run" / "policy.json")
    assert best["accuracy_val"] == pytest.approx(
        float(np.clip(model.predict([policy])["val"][0], 0, 1))
    )


def test_validate_real_scores_a_bench_policy_with_the_real_proxy(
    bench_file: str, tmp_path, real: JPQEnv, capsys
):
    from jpq_agents.cli import main
    from jpq_agents.run import run_search
    from jpq_agents.validate import replay_real

    out = tmp_path / "bench-run"
    kwargs = {"bench": bench_file, "budget_bops": 1 / 64}
    run_search("greedy", out, 8, env_id="jpq_env/JPQBench-v0", env_kwargs=kwargs, progress=False)
    rows = replay_real(out)
    policy = Policy.load(out / "policy.json")
    assert len(rows) == 1
    assert rows[0]["real_val"] == real.evaluator.accuracy(policy)  # the real proxy's score
    assert rows[0]["real_test"] == real.evaluator.test_accuracy(policy)
    predicted = BenchModel.load(bench_file).predict([policy])
    assert rows[0]["predicted_val"] == pytest.approx(float(predicted["val"][0]))
    # A cache of real environments: built once, reused by the next call, the same scores.
    envs: dict = {}
    assert replay_real(out, envs=envs) == rows and len(envs) == 1
    built = next(iter(envs.values()))
    assert replay_real(out / "policy.json", envs=envs)[0]["real_val"] == rows[0]["real_val"]
    assert list(envs.values()) == [built]
    assert main(["validate", "--real", "--quiet", str(out)]) == 0
    assert "held-out score predicted" in capsys.readouterr().out
    # A policy of the real environment was not found on a bench: --real refuses it by name.
    plain = tmp_path / "plain-run"
    run_search("random", plain, 2, env_kwargs={"act_bits": ACTS}, progress=False)
    with pytest.raises(ArgumentError, match="not found on a bench"):
        replay_real(plain)
    assert main(["validate", "--data", "somewhere", str(plain)]) != 0
    assert "go with --real" in capsys.readouterr().err


def test_jpq_search_runs_on_a_bench_without_a_task(bench_file: str, tmp_path, capsys):
    from jpq_agents.cli import main

    out = tmp_path / "cli"
    argv = ["search", "--env", "jpq_env/JPQBench-v0", "--env-option", f"bench={bench_file}"]
    argv += ["--agent", "random", "--episodes", "3", "--budget-bops", "1/64", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["env"]["bench"] == bench_file and "task" not in run["env"]
    printed = capsys.readouterr().out
    assert "evaluations" in printed and "best accuracy (val / test), predicted" in printed
    assert json.loads((out / "summary.json").read_text())["bench"] == "digits"
    # The named id, bench from its registration (no --env-option): predicted all the same.
    named = ["search", "--env", "jpq_env/JPQBench-ResNet20-v0", "--agent", "random"]
    assert main([*named, "--episodes", "2", "--quiet", "--out", str(tmp_path / "named")]) == 0
    assert "best accuracy (val / test), predicted" in capsys.readouterr().out
    # A task given to a bench is refused by name, not ignored.
    assert main([*argv, "--task", "digits", "--out", str(tmp_path / "refused")]) != 0
    assert "takes no ['task']" in capsys.readouterr().err


# ---------------------------------------------------------------- a bench of the user's own model


class _Mine(torch.nn.Module):
    """A user's own network: an architecture jpq-env does not build."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3)
        self.fc = torch.nn.Linear(width * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_a_bench_of_the_users_own_model_from_info_policies(tmp_path):
    """The README's way: a gym.make env, info["policy"] lists, then the bench with model=."""
    from torch.utils.data import TensorDataset

    from jpq_env import make_task

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 8, 8, generator=g), torch.arange(64) % 4)
    torch.manual_seed(0)
    net = _Mine().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    task = make_task(net, train=data, val=data, test=data, name="mine")
    env = gym.make("jpq_env/JPQWeightsActs-v0", task=task, budget_bops=1 / 8)
    policies, val = [], []
    for seed in range(12):
        trace = rollout(env.unwrapped, episode_actions(env.unwrapped, seed), seed=seed)
        policies.append(trace[-1][-1]["policy"])  # the JSON form, as a user reads it from info
        val.append(trace[-1][-1]["accuracy"])
    with pytest.raises(ArgumentError, match=r"policies\[0\] is a str"):
        build_bench(env, ["nope", *policies[1:]], val)
    with pytest.raises(ArgumentError, match="needs a jpq-env environment"):
        build_bench(object(), policies, val)  # type: ignore[arg-type]
    path = tmp_path / "mine.npz"
    build_bench(env, policies, val, epochs=50).save(path)
    # jpq-env cannot build 'mine': the bench says how to give the network.
    with pytest.raises(ArgumentError, match=r"not built in .* model="):
        gym.make("jpq_env/JPQBench-v0", bench=str(path), budget_bops=1 / 8)
    with pytest.raises(ArgumentError, match="made for another graph than the model given"):
        JPQBenchEnv(bench=str(path), model=_Mine(width=5))
    with pytest.raises(ArgumentError, match=r"model must be a torch\.nn\.Module"):
        JPQBenchEnv(bench=str(path), model="mine")  # type: ignore[arg-type]
    bench = gym.make("jpq_env/JPQBench-v0", bench=str(path), model=net, budget_bops=1 / 8)
    assert bench.action_space == env.action_space
    assert bench.observation_space == env.observation_space
    actions = episode_actions(env.unwrapped, 3)
    rollout(env.unwrapped, actions, seed=3)
    info = rollout(bench.unwrapped, actions, seed=3)[-1][-1]
    assert bench.unwrapped.last_policy.key() == env.unwrapped.last_policy.key()
    predicted = BenchModel.load(path).predict([env.unwrapped.last_policy])["val"][0]
    assert info["accuracy"] == pytest.approx(float(np.clip(predicted, 0, 1)))
    for key, value in net.state_dict().items():  # the user's network is only read
        assert torch.equal(value, before[key])
