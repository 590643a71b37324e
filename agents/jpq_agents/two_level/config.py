"""The two-level controller's hyperparameters, checked when they are set."""

from __future__ import annotations

from dataclasses import dataclass

from jpq_env.errors import ArgumentError

__all__ = ["TwoLevelConfig"]


@dataclass
class TwoLevelConfig:
    """Hyperparameters of the two-level controller (defaults tuned on the digits task).

    Attributes:
        hidden: Width of the hidden layers.
        lr: Adam learning rate.
        batch_episodes: Episodes per update.
        epochs: Passes over a batch per update.
        clip: PPO clipping range.
        entropy: Entropy bonus.
        value: Weight of the critic's loss.
        elite: Episodes kept for self-imitation.
        imitation: Weight of the self-imitation loss.
        refine_fraction: Share of the evaluations spent refining the best decisions at the end.
        warm_start: Play the prune-then-quantize warm-start episodes first.
        greedy_start: Start with greedy's sensitivity probes instead (``greedy``'s rounds, each
            probe an episode the controllers learn from), then learn and refine from greedy's
            best with the evaluations left (``warm_start`` is then not played).
        accept_ties: During refinement, move to a neighbour that scores as well as the best (the
            proxy is coarse: 288 held-out samples move in steps of 0.35%, so plateaus are wide).
        refine_batch: Neighbours of the best tried per refinement round (the round's best is
            kept), evaluated in parallel on an evaluator pool. The rounds do not depend on the
            evaluator, so in-process and pooled searches give the same records; a pool with
            more workers than this leaves the extra ones idle during refinement.
        surrogate: Model-based learning: train the controllers on imagined episodes scored by a
            surrogate of the proxy (``jpq_agents.surrogate``) fitted to the real evaluations, and
            spend real evaluations on the imagined episodes with the best upper confidence bound;
            refinement screens its neighbours with the surrogate too. False: the controllers learn
            from real episodes alone (model-free).
        imagined: Imagined episodes per round of the model-based learning phase.
        real_per_round: Real evaluations per round (the imagined episodes with the best bound).
        optimism: Standard deviations of the surrogate added to its mean (exploration).
        screen: Refinement: neighbours scored by the surrogate per neighbour evaluated.
        race: Refinement: stop an evaluation once it cannot beat the incumbent (the proxy's
            racing, ``JPQEnv.race``), paired with the incumbent's per-image results.
        fit_window: The surrogate is fitted to at most this many real evaluations: the best
            half by score and the most recent ones. A fit's cost grows with its data (on one
            core, 0.6 s on 1,000 evaluations, 6 s on 10,000) and the surrogate is refitted every
            round, so without a window a long search on a cheap evaluator (10,000 evaluations on
            JPQ-Bench) spends hours fitting; searches of up to ``fit_window`` evaluations fit
            to all of them, exactly as before the window (a longer run logged before it existed
            replays differently past it: resuming one stops, naming the policy replayed).
    """

    hidden: int = 64
    lr: float = 3e-3
    batch_episodes: int = 8
    epochs: int = 8
    clip: float = 0.2
    entropy: float = 0.01
    value: float = 0.5
    elite: int = 16
    imitation: float = 0.5
    refine_fraction: float = 0.7
    warm_start: bool = True
    greedy_start: bool = False
    accept_ties: bool = True
    refine_batch: int = 4
    surrogate: bool = True
    imagined: int = 96
    real_per_round: int = 8
    optimism: float = 1.0
    screen: int = 8
    race: bool = True
    fit_window: int = 1024

    def __post_init__(self) -> None:
        """Refuse values the controller cannot run with, naming the field."""
        for name in (
            "hidden", "batch_episodes", "epochs", "refine_batch", "imagined", "real_per_round",
            "fit_window",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ArgumentError(
                    f"TwoLevelConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("elite", "screen"):
            if getattr(self, name) < 0:
                raise ArgumentError(
                    f"TwoLevelConfig.{name} must be >= 0, got {getattr(self, name)}"
                )
        if not self.lr > 0 or not self.clip > 0:
            raise ArgumentError(
                f"TwoLevelConfig: lr and clip must be > 0, got {self.lr}, {self.clip}"
            )
        if not 0.0 <= self.refine_fraction <= 1.0:
            raise ArgumentError(
                f"TwoLevelConfig.refine_fraction must be in [0, 1], got {self.refine_fraction}"
            )
