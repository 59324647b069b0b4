"""``qpu``: a D-Wave quantum annealer through Ocean (``DWaveSampler`` + minor-embedding).

The BQM is minor-embedded into the QPU's working graph — by ``minorminer.find_embedding``
(seeded, for sparse problems) or, with ``clique=True``, by a cached clique embedding
(``minorminer.busclique``, what ``DWaveCliqueSampler`` uses; the better choice for dense blocks:
2–3× shorter chains, up to ~180 variables on Advantage) — and sampled with
``FixedEmbeddingComposite``. Reported: the QPU's own timing (µs, ``info["qpu_timing_us"]``;
``info["timing"]["qpu_access_seconds"]`` is the charged QPU access time; none from a child that is not a
``DWaveSampler``, such as Ocean's ``MockDWaveSampler``, whose timing is made up), the embedding search
time, the chain strength used, chain lengths and the mean chain-break fraction (also per read in
the ``chain_break_fraction`` field).

The token comes from ``dwave setup --auth`` (the user's ``dwave.conf``) or ``DWAVE_API_TOKEN``;
``client_config`` passes further dwave-cloud-client options (e.g. ``endpoint``,
``http_retry_total``). Every failure a user can meet — no token, a rejected token, no matching
solver, no network, no embedding — is a one-line :class:`SolverError` that says what to do.
For offline runs and tests pass ``child_sampler`` (e.g. Ocean's ``MockDWaveSampler``: a real
Pegasus topology whose "QPU" is a steepest-descent placeholder). A QPU is physical: ``seed``
only fixes the embedding search, not the samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import dimod
import numpy as np

from qubocompress.errors import SolverError
from qubocompress.solvers.base import (
    Requirement,
    empty_sampleset,
    known_options,
    positive_int,
    positive_number,
    require_all,
    timed_sampleset,
)

T = TypeVar("T")

CHAIN_STRENGTH_RULES = ("uniform_torque_compensation", "scaled")
TOKEN_HINT = "run `dwave setup --auth` or set DWAVE_API_TOKEN"
# The optional modules ``qpu`` (and ``hybrid``) import, as (module, extra, package) for ``require``.
QPU_REQUIRES: tuple[Requirement, ...] = (("dwave.system", "qpu", "dwave-system"), ("minorminer", "qpu", "dwave-system"))


def missing_token(solver: str) -> SolverError:
    """The one-line SolverError for a D-Wave solver without an API token."""
    return SolverError(f"solver {solver!r} has no D-Wave API token: {TOKEN_HINT}")


def cloud_error(exc: BaseException, solver: str) -> SolverError | None:
    """The one-line SolverError for an exception from dwave-cloud-client, or None if it is not one."""
    from dwave.cloud import exceptions as cloud
    from dwave.cloud.config.exceptions import ConfigFileError

    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError) and "API token not defined" in str(exc):
        return missing_token(solver)
    if isinstance(exc, ValueError) and str(exc).startswith("Config profile"):
        return SolverError(
            f"solver {solver!r}: D-Wave {detail[0].lower()}{detail[1:]}; fix DWAVE_PROFILE or the profile in "
            f"client_config, or {TOKEN_HINT}"
        )
    if isinstance(exc, cloud.SolverAuthenticationError):
        return SolverError(f"solver {solver!r}: the D-Wave API rejected the token ({detail}); {TOKEN_HINT}")
    if isinstance(exc, cloud.SolverNotFoundError):
        return SolverError(
            f"solver {solver!r}: no D-Wave solver matches the request ({detail}); "
            "see `dwave solvers` and adjust the solver filter or DWAVE_API_SOLVER"
        )
    if isinstance(exc, cloud.SolverOfflineError):
        return SolverError(f"solver {solver!r}: the D-Wave solver is offline ({detail}); try again later")
    if isinstance(exc, ConfigFileError):
        return SolverError(f"solver {solver!r}: cannot read the D-Wave config file ({detail}); fix it or {TOKEN_HINT}")
    if isinstance(exc, (cloud.InvalidProblemError, cloud.ProblemError, cloud.SolverError)):
        return SolverError(f"solver {solver!r}: the D-Wave solver rejected or failed the problem ({detail})")
    if isinstance(exc, OSError):
        return SolverError(
            f"solver {solver!r} cannot reach the D-Wave API ({type(exc).__name__}: {detail}); "
            "check the network and DWAVE_API_ENDPOINT / DWAVE_API_REGION, then try `dwave ping`"
        )
    return None


def call_cloud(action: Callable[[], T], solver: str) -> T:
    """``action()``, with dwave-cloud-client failures turned into one-line SolverErrors."""
    try:
        return action()
    except Exception as exc:  # anything cloud_error does not recognise is re-raised as it was
        error = cloud_error(exc, solver)
        if error is None:
            raise
        raise error from exc


def check_token(solver: str, options: Mapping[str, Any]) -> None:
    """SolverError unless the sampler built with ``options`` would find a D-Wave API token; no network call.

    Reads the configuration the way the sampler's cloud client will (dwave-cloud-client's own
    ``load_config``): ``options["client_config"]`` (``token``, ``config_file``, ``profile``, ...) over
    the ``DWAVE_*`` environment (``DWAVE_API_TOKEN``, ``DWAVE_CONFIG_FILE``, ``DWAVE_PROFILE``) over
    the config file ``dwave setup --auth`` writes. An unreadable config file or an unknown profile is
    the same one-line SolverError as when the sampler is built. Nothing to check when
    ``options["child_sampler"]`` is given (it brings its own connection, or none).
    """
    if options.get("child_sampler") is not None:
        return
    client_config = options.get("client_config") or {}
    if not isinstance(client_config, Mapping):
        raise SolverError(
            f"solver {solver!r}: client_config must be a mapping of dwave-cloud-client options, "
            f"got {type(client_config).__name__}"
        )
    from dwave.cloud.config import load_config

    config = call_cloud(lambda: load_config(**client_config), solver)
    defaults = config.get("defaults")  # the client's own defaults, lowest priority
    token = config.get("token") or (defaults.get("token") if isinstance(defaults, Mapping) else None)
    if not token:
        raise missing_token(solver)


def _chain_strength(value: Any) -> Any:
    """A float, or one of Ocean's chain-strength rules by name (None = uniform torque compensation)."""
    from dwave.embedding import chain_strength

    if value is None or value == "uniform_torque_compensation":
        return chain_strength.uniform_torque_compensation
    if value == "scaled":
        return chain_strength.scaled
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise SolverError(
        f"solver 'qpu': chain_strength must be a positive number or one of {', '.join(CHAIN_STRENGTH_RULES)}, "
        f"got {value!r}"
    )


def clique_embedding(variables: Iterable[Any], graph: Any) -> tuple[dict[Any, list[Any]], int]:
    """(clique embedding of ``variables`` into the networkx ``graph`` (a Chimera, Pegasus or Zephyr
    graph), the largest clique that graph holds); the embedding is empty when there are more
    variables than that. By ``minorminer.busclique``, cached on disk (what ``DWaveCliqueSampler`` uses)."""
    from minorminer.busclique import busgraph_cache

    cache = busgraph_cache(graph)
    embedding = cache.find_clique_embedding(list(variables))
    largest = len(cache.largest_clique())
    return {v: list(chain) for v, chain in embedding.items()}, largest


def minor_embedding(
    bqm: dimod.BinaryQuadraticModel, edges: Iterable[tuple[Any, Any]], seed: int | None, timeout: float, **options: Any
) -> dict[Any, list[Any]]:
    """``minorminer.find_embedding`` of ``bqm``'s interaction graph (every variable, coupled or not)
    into ``edges``, seeded, within ``timeout`` seconds (minorminer checks it between its rounds, so
    a search can run past it); further ``options`` go to find_embedding. Empty when none is found."""
    import minorminer

    source = list(bqm.quadratic) + [(v, v) for v in bqm.variables]
    if seed is not None:
        options["random_seed"] = int(seed)
    embedding = minorminer.find_embedding(source, list(edges), timeout=timeout, **options)
    return {v: list(chain) for v, chain in embedding.items()}


class QpuSampler(dimod.Sampler):
    """A D-Wave QPU with minor-embedding; every failure is a one-line SolverError.

    Args:
        child_sampler: a structured QPU-like sampler (default: ``DWaveSampler(solver=solver,
            **client_config)``, which connects at once).
        clique: embed as a clique (busclique cache) instead of ``minorminer.find_embedding``.
        solver: dwave-cloud-client solver filter, e.g. ``{"topology__type": "pegasus"}`` or a name.
        client_config: further ``DWaveSampler`` / dwave-cloud-client keyword arguments.
        **defaults: overrides of :attr:`DEFAULTS`: ``num_reads``, ``annealing_time`` (µs, None =
            the QPU's default), ``chain_strength`` (number, ``"uniform_torque_compensation"`` or
            ``"scaled"``), ``embedding_timeout`` (seconds for find_embedding), ``label``.
    """

    DEFAULTS: dict[str, Any] = {
        "num_reads": 100,
        "annealing_time": None,
        "chain_strength": "uniform_torque_compensation",
        "embedding_timeout": 60.0,
        "label": "qubocompress",
    }

    def __init__(
        self,
        child_sampler: dimod.Sampler | None = None,
        clique: bool = False,
        solver: dict[str, Any] | str | None = None,
        client_config: dict[str, Any] | None = None,
        **defaults: Any,
    ) -> None:
        system, _ = require_all(QPU_REQUIRES, "qpu")
        self.clique = bool(clique)
        self.defaults = self._checked({**self.DEFAULTS, **defaults})
        if child_sampler is None:
            config = dict(client_config or {})
            if solver is not None:
                config["solver"] = solver
            child_sampler = call_cloud(lambda: system.DWaveSampler(**config), "qpu")
        self.child = child_sampler
        # a child that is not a DWaveSampler (Ocean's MockDWaveSampler, a test's) reports no QPU time
        self.on_qpu = isinstance(child_sampler, system.DWaveSampler)

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        known_options(params, self.DEFAULTS, "solver 'qpu'")
        positive_int(params["num_reads"], "num_reads", "solver 'qpu'")
        _chain_strength(params["chain_strength"])
        if params["annealing_time"] is not None:
            positive_number(params["annealing_time"], "annealing_time", "solver 'qpu'", "µs")
        positive_number(params["embedding_timeout"], "embedding_timeout", "solver 'qpu'", "seconds")
        return params

    @property
    def parameters(self) -> dict[str, list[str]]:
        """:attr:`DEFAULTS` keys and ``seed`` (of the embedding search)."""
        return {key: [] for key in (*self.DEFAULTS, "seed")}

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults, the embedding method and the QPU's topology."""
        topology = self.child.properties.get("topology", {})
        return {"defaults": dict(self.defaults), "clique": self.clique, "topology": dict(topology)}

    def _embed(self, bqm: dimod.BinaryQuadraticModel, seed: int | None, timeout: float) -> dict[Any, list[Any]]:
        """A minor embedding of ``bqm`` into the child's graph; SolverError when none is found."""
        if self.clique:
            embedding, largest = clique_embedding(bqm.variables, self.child.to_networkx_graph())
            if not embedding:
                raise SolverError(
                    f"solver 'qpu': a clique of {bqm.num_variables} variables does not fit this QPU "
                    f"(largest clique: {largest}); use the hybrid solver or a smaller problem"
                )
            return embedding
        _, edges, _ = self.child.structure
        embedding = minor_embedding(bqm, edges, seed, timeout)
        if not embedding:
            raise SolverError(
                f"solver 'qpu' found no minor embedding of {bqm.num_variables} variables and "
                f"{bqm.num_interactions} couplings in the QPU graph within {timeout:g} s; try clique=True for "
                "dense problems, a longer embedding_timeout, or the hybrid solver"
            )
        return embedding

    def sample(self, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any) -> dimod.SampleSet:
        """Embed ``bqm``, sample it on the QPU and unembed (majority vote over broken chains)."""
        from dwave.system import FixedEmbeddingComposite

        params = self._checked({**self.defaults, **kwargs})
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"parameters": params})
        start = time.perf_counter()
        embedding = self._embed(bqm, seed, params["embedding_timeout"])
        embedding_seconds = time.perf_counter() - start
        qpu_options: dict[str, Any] = {"num_reads": params["num_reads"], "label": params["label"]}
        if params["annealing_time"] is not None:
            qpu_options["annealing_time"] = params["annealing_time"]
        composite = FixedEmbeddingComposite(self.child, embedding)

        def run() -> dimod.SampleSet:
            result = composite.sample(
                bqm,
                chain_strength=_chain_strength(params["chain_strength"]),
                chain_break_fraction=True,
                return_embedding=True,
                **qpu_options,
            )
            result.resolve()
            return result

        result = call_cloud(run, "qpu")
        seconds = time.perf_counter() - start
        context = result.info.get("embedding_context", {})
        chains = [len(chain) for chain in embedding.values()]
        qpu_timing = dict(result.info.get("timing", {})) if self.on_qpu else {}
        info = {
            "parameters": {key: value for key, value in params.items() if key != "chain_strength"},
            "chain_strength": None if context.get("chain_strength") is None else float(context["chain_strength"]),
            "chain_break_fraction": float(np.mean(result.record.chain_break_fraction)),
            "max_chain_length": max(chains),
            "qubits": sum(chains),
            "embedding": "clique (busclique)" if self.clique else "minorminer.find_embedding",
            "problem_id": result.info.get("problem_id"),
            "on_qpu": self.on_qpu,
            "qpu_timing_us": qpu_timing,
            "timing": {"embedding_seconds": embedding_seconds},
        }
        if self.on_qpu:
            info["timing"]["qpu_access_seconds"] = float(qpu_timing.get("qpu_access_time", math.nan)) * 1e-6
        return timed_sampleset(
            bqm,
            result.record.sample,
            list(result.variables),
            seconds,
            info,
            num_occurrences=result.record.num_occurrences,
            vectors={"chain_break_fraction": result.record.chain_break_fraction},
        )
