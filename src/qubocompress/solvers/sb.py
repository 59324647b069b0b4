"""``sb``: simulated bifurcation (the ``simulated-bifurcation`` package, PyTorch; CPU or CUDA).

Every agent integrates the SB equations of motion from its own random start and ends in a
binary vector; each agent is one read (``best_only=False``), so a success probability over
agents can be measured. ``mode="discrete"`` (dSB) by default: the package's default ballistic
mode gave far worse energies on binary QUBOs with large linear terms (notes §5: −14,239 against
−15,650 at n=2000). The BQM goes in as its BINARY polynomial ``xᵀQx + lᵀx + c`` with Q the dense
upper-triangular coupling matrix (float32 by default: 400 MB at n=10,000), on ``device`` —
CUDA when torch sees a GPU, else CPU.

Threads: on CPU torch runs on ``threads`` intra-op threads during the call (default 1, restored
afterwards): on a shared 2-core machine two threads took 179–189 s against 16–17 s for one on
133 variables (spinning workers under load), and one thread per solver keeps the comparison with
the single-threaded samplers fair.

Seeds: the agents' random starts come from torch's global generator; a seeded call draws them
inside ``torch.random.fork_rng``, so the caller's RNG state is left as it was. The same seed gives
the same SampleSet on CPU; CUDA kernels need not be bit-for-bit deterministic. A ``time_limit``
(seconds) stops the agents early — reproducible only when it does not bind.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import SolverError
from qubocompress.solvers.base import (
    BinaryQuadratic,
    Requirement,
    empty_sampleset,
    known_options,
    positive_int,
    require_all,
    time_limit_seconds,
    timed_sampleset,
)

SB_REQUIRES: tuple[Requirement, ...] = (
    ("simulated_bifurcation", "sb", "simulated-bifurcation"),
    ("torch", "sb", "torch"),
)
MODES = ("discrete", "ballistic")
DTYPES = ("float32", "float64")


class SimulatedBifurcationSampler(dimod.Sampler):
    """Simulated bifurcation; every agent is a read.

    Args:
        **defaults: overrides of :attr:`DEFAULTS`: ``agents`` (= reads), ``max_steps``, ``mode``
            (``"discrete"`` | ``"ballistic"``), ``heated``, ``early_stopping``, ``device``
            (``"cpu"`` | ``"cuda"`` | None = CUDA when available), ``dtype`` (``"float32"`` |
            ``"float64"``), ``time_limit`` (seconds or None), ``threads`` (torch CPU threads).
    """

    DEFAULTS: dict[str, Any] = {
        "agents": 128,
        "max_steps": 10_000,
        "mode": "discrete",
        "heated": False,
        "early_stopping": True,
        "device": None,
        "dtype": "float32",
        "time_limit": None,
        "threads": 1,
    }

    def __init__(self, **defaults: Any) -> None:
        self._sb, self._torch = require_all(SB_REQUIRES, "sb")
        self.defaults = self._checked({**self.DEFAULTS, **defaults})

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        known_options(params, self.DEFAULTS, "simulated bifurcation")
        positive_int(params["agents"], "agents", "solver 'sb'")
        positive_int(params["max_steps"], "max_steps", "solver 'sb'")
        positive_int(params["threads"], "threads", "solver 'sb'")
        time_limit_seconds(params["time_limit"], "solver 'sb'")
        if params["mode"] not in MODES:
            raise SolverError(f"solver 'sb': mode must be one of {', '.join(MODES)}, got {params['mode']!r}")
        if params["dtype"] not in DTYPES:
            raise SolverError(f"solver 'sb': dtype must be one of {', '.join(DTYPES)}, got {params['dtype']!r}")
        if params["device"] not in (None, "cpu", "cuda") and not str(params["device"]).startswith("cuda:"):
            raise SolverError(f"solver 'sb': device must be 'cpu' or 'cuda', got {params['device']!r}")
        if str(params["device"]).startswith("cuda") and not self._torch.cuda.is_available():
            raise SolverError("solver 'sb': device 'cuda' asked for, but torch sees no CUDA GPU; use device='cpu'")
        return params

    @property
    def parameters(self) -> dict[str, list[str]]:
        """:attr:`DEFAULTS` keys, ``num_reads`` (another name for ``agents``) and ``seed``."""
        return {key: [] for key in (*self.DEFAULTS, "num_reads", "seed")}

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults and whether CUDA is available."""
        return {"defaults": dict(self.defaults), "cuda_available": bool(self._torch.cuda.is_available())}

    def sample(self, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any) -> dimod.SampleSet:
        """Run the agents on ``bqm``; keyword arguments override the defaults."""
        if "num_reads" in kwargs:
            reads = kwargs.pop("num_reads")
            if "agents" in kwargs and kwargs["agents"] != reads:
                raise SolverError("solver 'sb': num_reads and agents name the same thing; give one of them")
            kwargs["agents"] = reads
        params = self._checked({**self.defaults, **kwargs})
        torch = self._torch
        device = params["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
        info: dict[str, Any] = {"parameters": {**params, "device": device}}
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, info)
        start = time.perf_counter()
        qubo = BinaryQuadratic(bqm)
        dtype = getattr(torch, params["dtype"])
        matrix = torch.from_numpy(qubo.dense_upper(np.dtype(params["dtype"]))).to(device)
        linear = torch.from_numpy(qubo.linear.astype(params["dtype"])).to(device)
        devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        threads = torch.get_num_threads()
        torch.set_num_threads(params["threads"])
        try:
            with (
                torch.random.fork_rng(devices=devices, enabled=seed is not None),
                warnings.catch_warnings(record=True) as caught,
            ):
                warnings.simplefilter("always")
                if seed is not None:
                    torch.manual_seed(seed)
                vectors, _ = self._sb.minimize(
                    matrix,
                    linear,
                    domain="binary",
                    dtype=dtype,
                    device=device,
                    agents=params["agents"],
                    max_steps=params["max_steps"],
                    best_only=False,
                    mode=params["mode"],
                    heated=params["heated"],
                    verbose=False,
                    early_stopping=params["early_stopping"],
                    timeout=params["time_limit"],
                )
        finally:
            torch.set_num_threads(threads)
        # the package warns when no agent met its stop criterion; that is a fact about the run
        info["converged"] = not any(type(warning.message).__name__ == "ConvergenceWarning" for warning in caught)
        states = vectors.reshape(params["agents"], qubo.num_variables).round().to("cpu").numpy()
        seconds = time.perf_counter() - start
        return timed_sampleset(bqm, qubo.to_vartype(states), qubo.variables, seconds, info)
