"""``rl-acc``: a HAQ/AMC-style agent that scores candidate plans by measuring the compressed model.

The RL baseline as the original methods run it (HAQ, arXiv 1811.08886; AMC, arXiv 1802.03494),
not on the QUBO's surrogate energy: each episode proposes a plan, the plan is pruned, quantized
and evaluated by the ``evaluate(plan)`` the pipeline hands down, and that score is the reward.

Episode: a gymnasium environment walks the spec's layers in forward order. State (all in [0, 1]),
HAQ's layer embedding plus AMC's budget features: layer index, kind (conv / linear), in and out
channels, kernel area, log weights, log output positions, whether this layer decides a channel
group, the previous action (prune, bits), the cost of the layers already decided and the least
cost of the layers still ahead, both as shares of the budget (capped at 1). Action: two numbers in
[0, 1], mapped to an option index ``min(floor(a · count), count − 1)``: the prune option of the
layer's output group (at the group's first layer only; later members and the classifier ignore
it), and the layer's bit option. At the end of the episode the action wall
(:class:`~qubocompress.search.common.DecisionSpace`) makes the plan fit the budget, as HAQ's
``_final_action_wall`` does, and the repaired plan is evaluated (memoised).

Reward: 0 on every step but the last, then the standardised score ``(score − m) / s``, with ``m``
and ``s`` the mean and standard deviation of the warm-up episodes' scores (the warm-up rewards in
the replay buffer are standardised too when learning starts). HAQ's ``0.1·(acc − acc_fp)`` and AMC's
moving-average baseline are affine maps of the score as well; fixing the map after the warm-up keeps
the reward stationary and makes the agent indifferent to the score's units (fraction, percent,
nats). As in HAQ/AMC, every transition of an episode learns from the final reward: n-step returns
over the whole episode with no discount.

Agent: stable-baselines3 DDPG, as HAQ and AMC (actor and critic MLPs 64×64, learning rate 1e-3,
batch 64, τ = 0.01, one gradient step per environment step), CPU. Warm-up: ``warmup_episodes``
episodes of uniformly random actions, no noise added (AMC uses 100 of 800 episodes; default 100
of 300 here). Exploration afterwards: Gaussian noise on the action whose standard deviation (in
[0, 1] action units) falls geometrically from 0.5 (AMC's and HAQ's initial δ) to 0.05 over the
learning episodes. Seeded (DDPG, the environment, the noise), inside a guard that restores the
global ``random`` / numpy / torch RNG states and runs the agent on one torch thread
(:func:`~qubocompress.solvers.rl.isolated_torch`); ``evaluate`` runs on the caller's thread count,
as in ``ga-acc``, so that both pay the same for an evaluation. The answer is the best plan
evaluated, as HAQ and AMC keep.

Measured on the synthetic VGG spec at 16× (score = minus the measured damage, 300 episodes): DDPG
learns (the mean damage of its proposals falls from 1.8 in the warm-up to 0.8) but slowly; a
learning rate of 1e-4, less noise (0.3 or 0.2 at the start), a batch of 128 or 2–4 gradient steps
per environment step gave best damages of 0.55–0.61 against 0.58 (means over 3 seeds): no clear gain.

The episodes follow the evaluation cap: 300, or one per evaluation allowed when the cap is higher
(AMC's 800 episodes: ``max_evaluations=800``), with 100 of them warm-up, or a third when fewer than
300 are run. Stops after ``total_episodes`` episodes or ``max_evaluations`` evaluations (``"evaluations"``),
after ``patience`` episodes without a better score (``"convergence"``), or when ``time_limit``
seconds have passed (``"time_limit"``).

Batches (``episodes_per_batch``, default 1: HAQ's and AMC's one episode at a time): B episodes walk
the layers side by side (a vectorised environment of B walks), each action from the same policy with
its own exploration noise; their B plans are scored together — with ``evaluate_many`` (e.g. Ray
actors, each holding the model and the validation split) in parallel — and the agent then learns
from all B (B × layers gradient steps, one per environment step as before). No plan can be
proposed before the previous policy's plans are scored, so B is what parallel scoring can use; the
plans depend on B, not on where they are scored: the same seed and B give the same plans, scores
and result with ``evaluate_many`` as without it (with no time limit: that is checked once per
batch there, before each plan here). The warm-up and the episodes are rounded up to
whole batches; patience counts episodes, checked after each batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from qubocompress.errors import SolverError
from qubocompress.problem.choices import Metric
from qubocompress.problem.spec import CompressionSpec
from qubocompress.search.common import (
    DecisionSpace,
    Evaluate,
    EvaluateMany,
    PlanScorer,
    SearchResult,
    SearchStopped,
    StopReason,
    check_search_seed,
)
from qubocompress.solvers.base import positive_int, require, time_limit_seconds
from qubocompress.solvers.rl import isolated_torch

METHOD = "rl-acc"
DEFAULT_EPISODES = 300
DEFAULT_WARMUP_EPISODES = 100
DEFAULT_MAX_EVALUATIONS = 300
NUM_FEATURES = 12
# Exploration noise, in [0, 1] action units: from the first learning episode to the last.
NOISE_START = 0.5
NOISE_END = 0.05
# DDPG (module docstring): hidden layers of actor and critic, learning rate, batch, soft update.
HIDDEN = (64, 64)
LEARNING_RATE = 1e-3
BATCH_SIZE = 64
TAU = 0.01


class LayerWalk:
    """The facts about the spec that every episode needs (static features, deciding layers).

    Args:
        space: the decision space.
    """

    def __init__(self, space: DecisionSpace) -> None:
        self.space = space
        layers = space.spec.layers
        count = len(layers)
        self.deciding_group: list[int | None] = []
        decided: set[int] = set()
        for layer in layers:
            group = layer.out_group
            if group is not None and group not in decided and space.counts[group] > 1:
                decided.add(group)
                self.deciding_group.append(group)
            else:
                self.deciding_group.append(None)

        def ratio(values: Sequence[float]) -> np.ndarray:
            array = np.asarray(values, dtype=np.float64)
            return array / max(float(array.max()), 1.0)

        def log_ratio(values: Sequence[float]) -> np.ndarray:
            array = np.log1p(np.asarray(values, dtype=np.float64))
            return array / max(float(array.max()), 1e-12)

        static = np.zeros((count, 8))
        static[:, 0] = np.arange(count) / max(count - 1, 1)
        static[:, 1] = [layer.kind == "conv" for layer in layers]
        static[:, 2] = ratio([layer.in_channels for layer in layers])
        static[:, 3] = ratio([layer.out_channels for layer in layers])
        static[:, 4] = ratio([layer.kernel_area for layer in layers])
        static[:, 5] = log_ratio([layer.num_weights() for layer in layers])
        static[:, 6] = log_ratio([layer.out_positions for layer in layers])
        static[:, 7] = [g is not None for g in self.deciding_group]
        self.static = static

    @staticmethod
    def option(action: float, count: int) -> int:
        """The option index of an action in [0, 1] among ``count`` options."""
        return min(int(np.clip(action, 0.0, 1.0) * count), count - 1)

    def budget_features(self, genome: np.ndarray, layer: int, decided: np.ndarray) -> list[float]:
        """Cost of the layers before ``layer`` as decided, and the least cost of the rest, over the budget."""
        space = self.space
        spent = float(space.layer_costs(genome)[:layer].sum())
        cheapest = np.where(decided, genome, space.smallest())
        rest = float(space.layer_costs(cheapest)[layer:].sum())
        return [min(spent / space.budget, 1.0), min(rest / space.budget, 1.0)]


def rl_acc_search(
    spec: CompressionSpec,
    evaluate: Evaluate,
    ratio: float,
    metric: Metric = "bits",
    bit_options: Sequence[int] | None = None,
    total_episodes: int | None = None,
    warmup_episodes: int | None = None,
    max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS,
    patience: int | None = None,
    time_limit: float | None = None,
    seed: int = 0,
    episodes_per_batch: int = 1,
    evaluate_many: EvaluateMany | None = None,
) -> SearchResult:
    """The best plan within ``ratio`` that a DDPG agent finds by calling ``evaluate`` (module docstring).

    Args:
        spec: the problem.
        evaluate: plan -> score, higher is better (e.g. validation top-1 before fine-tuning).
        ratio: the budget as a compression ratio vs fp32 in ``metric`` (> 1).
        metric: ``"bits"`` or ``"bops"``.
        bit_options: bit-widths on offer (default (2, 3, 4, 5, 6, 8) within the spec's range).
        total_episodes: at most this many episodes (plans proposed, >= 2), warm-up included (None:
            ``DEFAULT_EPISODES``, or ``max_evaluations`` when that is more).
        warmup_episodes: episodes of random actions before the agent learns (< total_episodes;
            None: ``DEFAULT_WARMUP_EPISODES``, at most a third of ``total_episodes``).
        max_evaluations: at most this many calls of ``evaluate`` (None: no cap).
        patience: stop after this many episodes without a better score (None: never).
        time_limit: seconds for the whole search (None: none); no evaluation starts after it.
        seed: seeds the agent, the environment and the noise (0..2^31 - 1); the same call twice
            gives the same result (with a deterministic ``evaluate`` and no time limit).
        episodes_per_batch: episodes proposed by one policy and scored together (module docstring).
        evaluate_many: plans -> (score, seconds) of each, each batch's new plans evaluated together
            (:meth:`~qubocompress.search.common.PlanScorer.score_many`; None: one ``evaluate`` after
            the other). It must score a plan as ``evaluate`` does.
    """
    start = time.perf_counter()
    who = f"search {METHOD!r}"
    # numpy integers as ints: JSON-ready parameters
    max_evaluations = None if max_evaluations is None else positive_int(max_evaluations, "max_evaluations", who)
    patience = None if patience is None else positive_int(patience, "patience", who)
    batch = positive_int(episodes_per_batch, "episodes_per_batch", who)
    episodes_given = total_episodes is not None
    if total_episodes is None:
        total_episodes = max(DEFAULT_EPISODES, max_evaluations or 0)
    total_episodes = whole_batches(positive_int(total_episodes, "total_episodes", who), batch)
    if total_episodes < 2:
        raise SolverError(
            f"{who}: total_episodes must be at least 2 (a warm-up episode, then learning), got {total_episodes}"
        )
    if warmup_episodes is None:
        warmup_episodes = max(1, min(DEFAULT_WARMUP_EPISODES, total_episodes // 3))
    warmup_episodes = whole_batches(positive_int(warmup_episodes, "warmup_episodes", who), batch)
    if not episodes_given:  # a batch as large as the default episodes: a learning batch after the warm-up
        total_episodes = max(total_episodes, warmup_episodes + batch)
    if warmup_episodes >= total_episodes:
        raise SolverError(
            f"{who}: warmup_episodes ({warmup_episodes}) must be fewer than total_episodes ({total_episodes})"
            + (f", both in whole batches of {batch} episodes" if batch > 1 else "")
        )
    time_limit = time_limit_seconds(time_limit, who)
    seed = check_search_seed(seed, who)
    space = DecisionSpace(spec, ratio, metric, bit_options)
    scorer = PlanScorer(space, evaluate, max_evaluations, time_limit, start, evaluate_many)
    require("gymnasium", METHOD, "rl", "gymnasium")
    require("stable_baselines3", METHOD, "rl", "stable-baselines3")
    parameters = {
        "ratio": float(ratio),
        "metric": metric,
        "bit_options": list(space.bit_options),
        "total_episodes": total_episodes,
        "warmup_episodes": warmup_episodes,
        "max_evaluations": max_evaluations,
        "patience": patience,
        "time_limit": time_limit,
        "seed": seed,
        "episodes_per_batch": batch,
    }
    if space.free.size == 0:  # one plan on offer: nothing to search
        scorer.score(np.zeros(space.num_genes, dtype=np.int64))
        return scorer.result(METHOD, "convergence", parameters, {"episodes": 0})
    walk = LayerWalk(space)
    steps = len(spec.layers)
    import torch

    caller_threads = torch.get_num_threads()
    with isolated_torch():
        stopped_by, episodes = _train(
            walk, scorer, total_episodes, warmup_episodes, batch, patience, steps, seed, caller_threads
        )
    return scorer.result(METHOD, stopped_by, parameters, {"episodes": episodes})


def whole_batches(episodes: int, batch: int) -> int:
    """``episodes`` rounded up to a multiple of ``batch``."""
    return -(-episodes // batch) * batch


def _train(
    walk: LayerWalk,
    scorer: PlanScorer,
    total_episodes: int,
    warmup_episodes: int,
    batch: int,
    patience: int | None,
    steps: int,
    seed: int,
    caller_threads: int,
) -> tuple[StopReason, int]:
    """Run DDPG on ``batch`` walks side by side until a budget stops it; returns (why it stopped,
    episodes whose plans were scored). The agent runs on one torch thread; ``evaluate`` runs on the caller's
    ``caller_threads``.
    """
    import gymnasium
    import torch
    from stable_baselines3 import DDPG
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import VectorizedActionNoise
    from stable_baselines3.common.vec_env import DummyVecEnv

    space = walk.space
    num_groups = space.num_groups

    class RewardMap:
        """Every walk's scores, and the map score -> reward fixed when learning starts."""

        def __init__(self) -> None:
            self.reference, self.spread = 0.0, 1.0
            self.scores: list[float] = []

    rewards = RewardMap()

    class Walk(gymnasium.Env):
        """One episode per plan (module docstring); its score is set by :class:`Walks` before the last step."""

        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self) -> None:
            self.observation_space = gymnasium.spaces.Box(0.0, 1.0, shape=(NUM_FEATURES,), dtype=np.float32)
            self.action_space = gymnasium.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
            self.score = math.nan

        def _observation(self) -> np.ndarray:
            n = min(self.layer, steps - 1)
            budget = walk.budget_features(self.genome, self.layer, self.decided)
            return np.concatenate([walk.static[n], self.previous, budget]).astype(np.float32)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            super().reset(seed=seed)
            self.layer = 0
            self.genome = np.zeros(space.num_genes, dtype=np.int64)
            self.decided = np.zeros(space.num_genes, dtype=bool)
            self.decided[space.counts == 1] = True
            self.previous = [0.0, 1.0]
            return self._observation(), {}

        def decide(self, action: Any) -> None:
            """The current layer's genes from ``action`` (idempotent until :meth:`step`)."""
            group = walk.deciding_group[self.layer]
            if group is not None:
                self.genome[group] = walk.option(float(action[0]), int(space.counts[group]))
                self.decided[group] = True
            gene = num_groups + self.layer
            self.genome[gene] = walk.option(float(action[1]), int(space.counts[gene]))
            self.decided[gene] = True

        def step(self, action: Any) -> Any:
            self.decide(action)
            self.previous = [float(action[0]), float(action[1])]
            self.layer += 1
            if self.layer < steps:
                return self._observation(), 0.0, False, False, {}
            reward = (self.score - rewards.reference) / rewards.spread
            return self._observation(), reward, True, False, {"score": self.score}

    class Walks(DummyVecEnv):
        """The batch's walks; at their last layer (all reach it together) their plans are scored at once."""

        scored_when_stopped = 0  # the walks of the last batch whose plans were scored before a stop

        def step_wait(self) -> Any:
            walks: list[Walk] = self.envs  # type: ignore[assignment]
            if walks[0].layer == steps - 1:
                for one, action in zip(walks, self.actions):
                    one.decide(action)
                torch.set_num_threads(caller_threads)  # evaluate runs as the caller set it up
                answered = len(scorer.cache) + scorer.hits
                try:
                    scores = scorer.score_many([one.genome for one in walks])
                except SearchStopped:
                    self.scored_when_stopped = len(scorer.cache) + scorer.hits - answered
                    raise
                finally:
                    torch.set_num_threads(1)
                for one, score in zip(walks, scores):
                    one.score = score
                rewards.scores.extend(scores)
            return super().step_wait()

    class DecayingNoise(VectorizedActionNoise):
        """Gaussian noise (in the agent's [-1, 1] action units), one draw per walk, that shrinks after
        every learning episode (a VectorizedActionNoise so that SB3 does not copy it per walk: copies
        would draw the same noise)."""

        def __init__(self) -> None:  # noqa: D107  (no base noise to copy)
            self.rng = np.random.default_rng(seed)
            self.sigma = 2 * NOISE_START
            learning = max(total_episodes - warmup_episodes, 1)
            self.decay = (NOISE_END / NOISE_START) ** (1 / learning)
            self.finished = 0  # episodes
            self.drawn = False

        def __call__(self) -> np.ndarray:
            self.drawn = True
            if self.finished < warmup_episodes:  # SB3 adds noise to its uniform warm-up actions too
                return np.zeros((batch, 2), dtype=np.float32)
            return self.rng.normal(0.0, self.sigma, size=(batch, 2)).astype(np.float32)

        def reset(self, indices: Any = None) -> None:
            if not self.drawn:  # SB3's reset as learning starts, before any episode
                return
            self.finished += 1  # SB3 resets once per finished episode (per walk)
            if self.finished > warmup_episodes:
                self.sigma *= self.decay

        def __repr__(self) -> str:
            return f"DecayingNoise(sigma={self.sigma:.3g}, finished={self.finished})"

    walks = Walks([Walk for _ in range(batch)])

    class Budget(BaseCallback):
        """Counts episodes, fixes the reward map when learning starts, stops on patience or the clock."""

        def __init__(self) -> None:
            super().__init__()
            self.episodes, self.stale, self.best = 0, 0, -math.inf
            self.standardised = False
            self.stopped_by: StopReason = "evaluations"

        def _on_step(self) -> bool:
            if not self.locals["dones"][0]:
                return True
            self.episodes += batch
            if scorer.best_score > self.best:
                self.best, self.stale = scorer.best_score, 0
            else:
                self.stale += batch
            if patience is not None and self.stale >= patience:
                self.stopped_by = "convergence"
                return False
            if scorer.deadline is not None and time.perf_counter() >= scorer.deadline:
                self.stopped_by = "time_limit"
                return False
            return True

        def _on_rollout_end(self) -> None:
            if self.standardised or self.episodes < warmup_episodes:
                return
            scores = np.array(rewards.scores)
            rewards.reference, rewards.spread = float(scores.mean()), float(scores.std()) or 1.0
            buffer = self.model.replay_buffer
            ends = buffer.dones[: buffer.pos].astype(bool)
            buffer.rewards[: buffer.pos][ends] = (
                buffer.rewards[: buffer.pos][ends] - rewards.reference
            ) / rewards.spread
            self.standardised = True

    budget = Budget()
    agent = DDPG(
        "MlpPolicy",
        walks,
        learning_rate=LEARNING_RATE,
        buffer_size=total_episodes * steps,
        learning_starts=warmup_episodes * steps,
        batch_size=BATCH_SIZE,
        tau=TAU,
        gamma=1.0,
        train_freq=(steps, "step"),  # one episode of every walk
        gradient_steps=-1,
        action_noise=DecayingNoise(),
        n_steps=steps,
        policy_kwargs={"net_arch": list(HIDDEN)},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    try:
        agent.learn(total_timesteps=total_episodes * steps, callback=budget)
    except SearchStopped as stop:
        return stop.reason, budget.episodes + walks.scored_when_stopped
    return budget.stopped_by, budget.episodes
