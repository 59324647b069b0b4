"""``rl``: a reinforcement-learning agent in the style of HAQ / AMC, scored by the BQM's energy.

A gymnasium environment walks the spec's layers in forward order. At each layer the agent picks
an action (prune bucket, bit-width) — ``MultiDiscrete([prune_levels + 1, 2**K])``:

* prune bucket j prunes ``round(j / prune_levels · max_pruned)`` of the layer's channel group
  (to a multiple of its ``blocks``, :meth:`ChannelGroup.round_count`), always its least important
  candidates (``group.candidates()``, L1 order). A group whose
  channels span several layers is decided at its first layer; later members ignore the bucket.
  Layers with unprunable outputs (the classifier) ignore it too. With ``prune_levels`` ≥ the
  largest ``max_pruned`` every pruning count is reachable; the default caps it at 32 buckets, so on
  wider groups the agent's answers lie on a grid (its gap to the optimum includes that grid).
* bit-width ``min_bits + a``, a = 0..2^K−1.

State (all in [0, 1]), as in HAQ / AMC: layer index, kind (conv / linear), in and out channels,
kernel area, log weights, log output positions, the layer's share of the weight bits, whether it
decides a group and the group's prunable share, the share of weight bits removed so far and the
share still ahead, and the previous action (prune fraction, bit-width). The reward is 0 until the
plan is complete, then ``−E(plan) / γ``: ``E`` is the BQM energy of the decoded plan
(``formulation.encode`` → ``bqm`` energy), and γ sets the scale because ``−γ ≤ E* ≤ E(uncompressed)
= 0`` in the paper form (formulations without ``gamma`` use the magnitude of the most compressed
plan's energy).

Agent: stable-baselines3 PPO (MLP policy 64×64, learning rate 1e-3 — better than 3e-4 on both seeds
tried —, rollouts of 256 steps, batches of 64, 10 epochs,
no discount — the only reward comes at the end — entropy bonus 0.01), CPU, for ``total_timesteps``
environment steps (= layers × episodes; default 20,000), cut short by ``time_limit`` (seconds) or
by ``patience`` episodes without a better plan. Seeded (PPO's seed, the environment's), inside a
guard that restores the global ``random`` / numpy / torch RNG states afterwards; torch runs on
one thread meanwhile.

Reads: per run (``num_reads`` independent runs, default 1), the best plan seen during training
(what HAQ/AMC keep), the deterministic policy's plan and ``rollouts`` stochastic ones; the run
contributes its ``keep`` best distinct plans (default 1: the run's answer), tagged by the ``run``
field. ``info``: ``evaluations`` (plans scored), ``episodes``, ``stopped_by`` (``"time_limit"`` |
``"convergence"`` | ``"evaluations"``), per-run reports.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import SolverError
from qubocompress.problem.plan import Plan
from qubocompress.problem.target import most_compressed_plan
from qubocompress.solvers.base import (
    BinaryQuadratic,
    Requirement,
    combined_stop_reason,
    known_options,
    positive_int,
    read_seeds,
    require,
    require_all,
    time_limit_seconds,
    timed_sampleset,
)

RL_REQUIRES: tuple[Requirement, ...] = (
    ("gymnasium", "rl", "gymnasium"),
    ("stable_baselines3", "rl", "stable-baselines3"),
)
NEEDS_FORMULATION = "solver 'rl' needs the formulation (layers and groups), not a bare BQM"
BUDGET_GRID_REFUSAL = (
    "solver 'rl' walks the paper formulation's free prune counts and bit-widths, which the budget formulation's "
    "option grid cannot encode; for a budget use another solver, or compress --search rl-acc"
)
NUM_FEATURES = 14


@contextlib.contextmanager
def isolated_torch() -> Iterator[None]:
    """Run a block that seeds Python's, numpy's and torch's global RNGs on one torch thread; restore all.

    One intra-op thread: the policy is a small MLP, and on a shared 2-core machine torch's default
    of one thread per core made PPO 13× slower (331 s against 25 s for 4,096 steps, measured).
    """
    import torch

    python_state, numpy_state, threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # SB3 seeds every CUDA device too: fork their states as well (none on a CPU-only torch)
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class LayerEnvironment:
    """Everything about the spec that the episodes need, and the scoring of finished plans.

    Args:
        formulation: the paper formulation (``spec``, ``encode``; its BQM is scored).
        qubo: the formulation's BQM as arrays.
        prune_levels: number of prune buckets above 0.
    """

    def __init__(self, formulation: Any, qubo: BinaryQuadratic, prune_levels: int) -> None:
        spec = formulation.spec
        self.formulation = formulation
        self.spec = spec
        self.qubo = qubo
        self.prune_levels = prune_levels
        self.bit_choices = 2**spec.bit_levels
        self.index = {v: i for i, v in enumerate(qubo.variables)}
        layers = spec.layers
        count = len(layers)
        self.deciding_group = [
            layer.out_group
            if layer.out_group is not None
            and next(n for n, other in enumerate(layers) if other.out_group == layer.out_group) == i
            else None
            for i, layer in enumerate(layers)
        ]
        filter_bits = np.array([layer.weights_per_filter() * layer.out_channels for layer in layers], dtype=float)
        self.layer_share = filter_bits / filter_bits.sum()
        weights = np.array([layer.num_weights() for layer in layers], dtype=float)
        positions = np.array([layer.out_positions for layer in layers], dtype=float)

        def ratio(values: np.ndarray) -> np.ndarray:
            return values / max(float(values.max()), 1.0)

        def log_ratio(values: np.ndarray) -> np.ndarray:
            return np.log1p(values) / max(float(np.log1p(values.max())), 1e-12)

        static = np.zeros((count, 10))
        static[:, 0] = np.arange(count) / max(count - 1, 1)
        static[:, 1] = [layer.kind == "conv" for layer in layers]
        static[:, 2] = ratio(np.array([layer.in_channels for layer in layers], dtype=float))
        static[:, 3] = ratio(np.array([layer.out_channels for layer in layers], dtype=float))
        static[:, 4] = ratio(np.array([layer.kernel_area for layer in layers], dtype=float))
        static[:, 5] = log_ratio(weights)
        static[:, 6] = log_ratio(positions)
        static[:, 7] = self.layer_share
        static[:, 8] = [g is not None for g in self.deciding_group]
        static[:, 9] = [
            spec.groups[g].max_pruned / spec.groups[g].size if g is not None else 0.0 for g in self.deciding_group
        ]
        self.static = static
        self.scale = self._energy_scale()
        self.evaluations = 0
        self.best_energy = math.inf
        self.best_plan: Plan | None = None

    def _energy_scale(self) -> float:
        gamma = getattr(self.formulation, "gamma", None)
        if gamma:
            return float(gamma)
        extreme = abs(self.score(most_compressed_plan(self.spec)))
        return extreme if extreme > 0 else 1.0

    def plan(self, prune_counts: dict[int, int], bits: list[int]) -> Plan:
        """The plan of per-group pruning counts (least important first) and per-layer bit-widths."""
        pruned = {
            group.name: tuple(int(i) for i in group.candidates()[: prune_counts.get(g, 0)])
            for g, group in enumerate(self.spec.groups)
        }
        return Plan(pruned=pruned, bits={layer.name: b for layer, b in zip(self.spec.layers, bits)})

    def score(self, plan: Plan) -> float:
        """The BQM energy of ``plan`` (``formulation.encode`` → the BQM's arrays)."""
        sample = self.formulation.encode(plan)
        state = np.zeros((1, self.qubo.num_variables))
        state[0, [self.index[v] for v, value in sample.items() if value]] = 1.0
        return float(self.qubo.energies(state)[0])

    def energy(self, plan: Plan) -> float:
        """:meth:`score`, counted as an evaluation; remembers the best plan scored."""
        energy = self.score(plan)
        self.evaluations += 1
        if energy < self.best_energy:
            self.best_energy, self.best_plan = energy, plan
        return energy

    def make_env(self) -> Any:
        """A gymnasium environment of one episode per plan (see the module docstring)."""
        gymnasium = require("gymnasium", "rl", "rl", "gymnasium")
        world = self

        class LayerWalk(gymnasium.Env):
            metadata: dict[str, Any] = {"render_modes": []}

            def __init__(self) -> None:
                self.observation_space = gymnasium.spaces.Box(0.0, 1.0, shape=(NUM_FEATURES,), dtype=np.float32)
                self.action_space = gymnasium.spaces.MultiDiscrete([world.prune_levels + 1, world.bit_choices])
                self.last_energy = math.nan

            def _observation(self) -> np.ndarray:
                n = min(self.layer, len(world.spec.layers) - 1)
                removed = float(np.sum(world.layer_share * self.removed_share))
                ahead = float(np.sum(world.layer_share[self.layer :]))
                dynamic = [min(removed, 1.0), ahead, *self.previous]
                return np.concatenate([world.static[n], dynamic]).astype(np.float32)

            def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
                super().reset(seed=seed)
                self.layer = 0
                self.counts: dict[int, int] = {}
                self.bits: list[int] = []
                self.removed_share = np.zeros(len(world.spec.layers))
                self.previous = [0.0, 1.0]
                return self._observation(), {}

            def step(self, action: Any) -> Any:
                spec = world.spec
                bucket, bit_choice = int(action[0]), int(action[1])
                layer = spec.layers[self.layer]
                group = world.deciding_group[self.layer]
                if group is not None:
                    self.counts[group] = spec.groups[group].round_count(
                        bucket / world.prune_levels * spec.groups[group].max_pruned
                    )
                bits = spec.min_bits + bit_choice
                self.bits.append(bits)
                out_group = layer.out_group
                kept = 1.0 if out_group is None else 1.0 - self.counts.get(out_group, 0) / layer.out_channels
                self.removed_share[self.layer] = 1.0 - kept * bits / spec.b_max
                self.previous = [
                    bucket / world.prune_levels,
                    (bits - spec.min_bits) / max(spec.b_max - spec.min_bits, 1),
                ]
                self.layer += 1
                if self.layer < len(spec.layers):
                    return self._observation(), 0.0, False, False, {}
                self.last_energy = world.energy(world.plan(self.counts, self.bits))
                return self._observation(), -self.last_energy / world.scale, True, False, {"energy": self.last_energy}

        return LayerWalk()


class ReinforcementLearningSampler(dimod.Sampler):
    """HAQ/AMC-style PPO agent over (prune ratio, bits) per layer; needs the formulation.

    Args:
        formulation: the paper formulation whose BQM is solved (``spec``, ``encode``, ``bqm``).
        **defaults: overrides of :attr:`DEFAULTS`: ``num_reads`` (independent training runs),
            ``total_timesteps``, ``time_limit`` (s for the whole call), ``patience`` (episodes
            without a better plan; None = off), ``prune_levels``, ``rollouts``, ``keep``,
            ``learning_rate``.
    """

    DEFAULTS: dict[str, Any] = {
        "num_reads": 1,
        "total_timesteps": 20_000,
        "time_limit": None,
        "patience": None,
        "prune_levels": 32,
        "rollouts": 4,
        "keep": 1,
        "learning_rate": 1e-3,
    }

    def __init__(self, formulation: Any | None, **defaults: Any) -> None:
        if formulation is None or not all(hasattr(formulation, key) for key in ("spec", "encode", "bqm")):
            raise SolverError(NEEDS_FORMULATION)
        if not formulation.free_counts:
            raise SolverError(BUDGET_GRID_REFUSAL)
        require_all(RL_REQUIRES, "rl")
        self.formulation = formulation
        self.defaults = self._checked({**self.DEFAULTS, **defaults})

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        known_options(params, self.DEFAULTS, "solver 'rl'")
        for key in ("num_reads", "total_timesteps", "prune_levels", "keep"):
            positive_int(params[key], key, "solver 'rl'")
        if params["patience"] is not None:
            positive_int(params["patience"], "patience", "solver 'rl'")
        rollouts = params["rollouts"]
        if isinstance(rollouts, bool) or not isinstance(rollouts, int) or rollouts < 0:
            raise SolverError(f"solver 'rl': rollouts must be an integer >= 0, got {rollouts!r}")
        rate = params["learning_rate"]
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise SolverError(f"solver 'rl': learning_rate must be a positive number, got {rate!r}")
        time_limit_seconds(params["time_limit"], "solver 'rl'")
        return params

    @property
    def parameters(self) -> dict[str, list[str]]:
        """:attr:`DEFAULTS` keys and ``seed``."""
        return {key: [] for key in (*self.DEFAULTS, "seed")}

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults and the size of the walk."""
        return {"defaults": dict(self.defaults), "layers": len(self.formulation.spec.layers)}

    def sample(self, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any) -> dimod.SampleSet:
        """Train ``num_reads`` agents on the formulation's BQM and return their best plans."""
        params = self._checked({**self.defaults, **kwargs})
        if not (bqm is self.formulation.bqm or bqm == self.formulation.bqm):
            raise SolverError(f"{NEEDS_FORMULATION}: this BQM is not the formulation's")
        start = time.perf_counter()
        qubo = BinaryQuadratic(bqm)
        runs, limit = params["num_reads"], params["time_limit"]
        states: list[np.ndarray] = []
        run_index: list[np.ndarray] = []
        reports: list[dict[str, Any]] = []
        for run, run_seed in enumerate(read_seeds(seed, runs)):
            deadline = None if limit is None else start + limit * (run + 1) / runs
            world = LayerEnvironment(self.formulation, qubo, params["prune_levels"])
            plans, report = self._run(world, params, int(run_seed), deadline)
            encoded = [self.formulation.encode(plan) for plan in plans]
            states.append(np.array([[sample[v] for v in qubo.variables] for sample in encoded], dtype=np.int8))
            run_index.append(np.full(len(plans), run, dtype=np.int32))
            reports.append(report)
        seconds = time.perf_counter() - start
        info = {
            "parameters": params,
            "stopped_by": combined_stop_reason([report["stopped_by"] for report in reports]),
            "evaluations": sum(report["evaluations"] for report in reports),
            "episodes": sum(report["episodes"] for report in reports),
            "runs": reports,
        }
        samples = qubo.to_vartype(np.concatenate(states))
        return timed_sampleset(bqm, samples, qubo.variables, seconds, info, vectors={"run": np.concatenate(run_index)})

    @staticmethod
    def _run(
        world: LayerEnvironment, params: dict[str, Any], seed: int, deadline: float | None
    ) -> tuple[list[Plan], dict[str, Any]]:
        """Train one PPO agent; (its ``keep`` best distinct plans, facts about the run)."""
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback

        run_start = time.perf_counter()
        patience = params["patience"]

        class Budget(BaseCallback):
            """Stops training at the deadline or after ``patience`` episodes without a better plan."""

            def __init__(self) -> None:
                super().__init__()
                self.stopped_by = "evaluations"
                self.episodes = 0
                self.best = math.inf
                self.stale = 0

            def _on_step(self) -> bool:
                for done in self.locals["dones"]:
                    if not done:
                        continue
                    self.episodes += 1
                    if world.best_energy < self.best:
                        self.best, self.stale = world.best_energy, 0
                    else:
                        self.stale += 1
                if deadline is not None and time.perf_counter() >= deadline:
                    self.stopped_by = "time_limit"
                    return False
                if patience is not None and self.stale >= patience:
                    self.stopped_by = "convergence"
                    return False
                return True

        budget = Budget()
        with isolated_torch():
            env = world.make_env()
            agent = PPO(
                "MlpPolicy",
                env,
                learning_rate=params["learning_rate"],
                n_steps=256,
                batch_size=64,
                n_epochs=10,
                gamma=1.0,
                gae_lambda=0.95,
                ent_coef=0.01,
                policy_kwargs={"net_arch": [64, 64]},
                seed=seed,
                device="cpu",
                verbose=0,
            )
            agent.learn(total_timesteps=params["total_timesteps"], callback=budget)
            candidates = [world.best_plan] if world.best_plan is not None else []
            for rollout in range(params["rollouts"] + 1):
                observation, _ = env.reset()
                done = False
                while not done:
                    action, _ = agent.predict(observation, deterministic=rollout == 0)
                    observation, _, done, _, _ = env.step(action)
                candidates.append(world.plan(env.counts, env.bits))
        scored = sorted({plan.to_json(): plan for plan in candidates}.values(), key=world.score)
        report = {
            "episodes": budget.episodes,
            "timesteps": int(agent.num_timesteps),
            "evaluations": world.evaluations,
            "stopped_by": budget.stopped_by,
            "best_energy": world.best_energy,
            "seconds": time.perf_counter() - run_start,
        }
        return scored[: params["keep"]], report
