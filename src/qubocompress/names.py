"""The names users choose among on the command line, importable without torch, scipy or dimod.

The parser shows and checks these, so that ``--help`` and argument errors answer at once. The
heavy modules' name tuples are these (importances, sensitivities, the bench's models, the cloud
solvers); their registries of what a name builds (``models.zoo.MODELS``, ``solvers.registry.SOLVERS``,
``problem.FORMULATIONS``, ``search.SEARCHES``) are checked by tests/test_names.py to hold exactly
these names, in this order.
"""

from __future__ import annotations

# Built-in models (models.zoo.MODELS).
MODELS = ("lenet5", "vgg", "vgg16", "resnet20", "resnet56", "mobilenet")
# QUBO solvers (solvers.registry.SOLVERS); the cloud ones need a D-Wave Leap token (qpu-decomposed
# runs offline on a mock QPU with its option qpu=mock).
SOLVERS = (
    "sa",
    "tabu",
    "greedy",
    "sqa",
    "sb",
    "qpu",
    "qpu-decomposed",
    "hybrid",
    "hybrid-cqm",
    "exact",
    "random",
    "ga",
    "rl",
)
CLOUD_SOLVERS = ("qpu", "qpu-decomposed", "hybrid", "hybrid-cqm")
OFFLINE_SOLVERS = tuple(name for name in SOLVERS if name not in CLOUD_SOLVERS)
# QUBO formulations (problem.FORMULATIONS).
FORMULATIONS = ("paper", "budget", "filters")
# How the budget formulation's BQM encodes its budget (problem.encodings.ENCODINGS).
BUDGET_ENCODINGS = ("slack", "unbalanced", "lagrangian")
# Filter importances (analysis.importance) and layer sensitivities (analysis.sensitivity).
IMPORTANCES = ("l1", "taylor", "fisher")
LAYER_SENSITIVITIES = ("measured", "mse", "hessian", "fisher")
# --sensitivity's default: fisher for the budget formulation (its damage of the prune options as
# well, in one backward pass: the same or better plans after fine-tuning on the built-in nets at a
# fifteenth to a fiftieth of the measured analysis's time, docs/benchmarks.md §3.2.2-3.2.3),
# measured for the paper's (§1 and the demo rest on it).
AUTO_SENSITIVITY = "auto"
SENSITIVITIES = (AUTO_SENSITIVITY, *LAYER_SENSITIVITIES)
# What a budget counts: weight bits or bit operations per sample.
METRICS = ("bits", "bops", "file")
# The QUBO route and the searches that score plans themselves (search.SEARCHES): the accuracy-in-the-loop
# GA and RL, and the uniform baseline (one bit-width, one L1 prune ratio).
SEARCH_METHODS = ("qubo", "ga-acc", "rl-acc", "uniform")
# The built-in models the solver benchmark covers (bench.instances.BUILTIN_MODELS).
BENCH_MODELS = ("lenet5", "vgg", "resnet20")
