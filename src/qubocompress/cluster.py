"""Cases as Ray tasks: on a local Ray cluster started for the run, or on an existing one.

:class:`Cluster` says where (``workers=N``: a local cluster of N CPUs, stopped after the run;
``address="auto"`` or ``"ray://HOST:PORT"`` / ``"HOST:PORT"``: an existing one); :func:`connect`
opens it. :meth:`Session.run_unordered` runs one function over many argument tuples as Ray tasks
(one CPU each) and yields each result as it arrives: the caller, on the driver, alone writes the
results. A task whose worker dies is run again by Ray (``retries`` times); one that dies every time
comes back as a :class:`Crashed` outcome with the reason, and the others go on. A
:class:`QubocompressError` the task raises is raised again on the driver, its one line kept; any
other exception comes back as Ray's ``RayTaskError``, with the worker's traceback. Ray is the
optional ``ray`` extra; asking for a cluster without it is one line.

:meth:`Session.pool` starts Ray actors that each build a function once (from object references:
e.g. a model and a data split sent to each actor once) and :meth:`Pool.map` applies it to many
items, one at a time per actor, the results in the items' order: the search's plan scoring.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qubocompress.errors import ClusterError, QubocompressError

RAY_EXTRA = "pip install 'qubocompress[ray]'"
# A ray:// address is Ray Client, which needs Ray's own "client" extra (grpcio) beside plain ray.
RAY_CLIENT_EXTRA = "pip install 'ray[client]'"
CLIENT_SCHEME = "ray://"
# Times Ray runs a task again after its worker died (a task's own exception is not retried).
DEFAULT_RETRIES = 2
# Seconds to wait for an address's TCP port before calling the cluster unreachable.
CONNECT_TIMEOUT = 5.0
MAX_PORT = 65535
ADDRESS = re.compile(r"^(?:ray://)?(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Crashed:
    """A task whose worker died on every try. ``reason``: Ray's one-line account of the last death."""

    reason: str


@dataclass(frozen=True)
class Cluster:
    """Where cases run: ``workers`` CPUs of a local cluster started for the run, or the cluster at
    ``address`` (``"auto"``: the one running on this machine; ``"ray://HOST:PORT"``: Ray Client;
    ``"HOST:PORT"``: its GCS). Neither: in this process, as without Ray. ``retries``: Ray's retries
    of a task whose worker died."""

    address: str | None = None
    workers: int | None = None
    retries: int = DEFAULT_RETRIES

    @property
    def enabled(self) -> bool:
        """Whether cases go to Ray at all."""
        return self.address is not None or self.workers is not None

    def check(self) -> None:
        """ClusterError for settings that cannot work, and for Ray missing; cheap, connects to nothing."""
        if self.address is not None and self.workers is not None:
            raise ClusterError("give --workers (a local Ray cluster) or --ray-address (an existing one), not both")
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ClusterError(f"--workers must be a whole number >= 1, got {self.workers!r}")
        if self.workers is not None and self.workers > usable_cpus():
            raise ClusterError(
                f"--workers {self.workers} is more than this machine's {usable_cpus()} CPUs, which a local "
                "cluster's workers share (each holds the model and data): give at most that many, or --ray-address "
                "for a cluster of more machines"
            )
        if self.address is not None and self.address != "auto":
            match = ADDRESS.match(self.address)
            if not match:
                raise ClusterError(f"--ray-address must be auto, ray://HOST:PORT or HOST:PORT, got {self.address!r}")
            if not 1 <= int(match["port"]) <= MAX_PORT:  # getaddrinfo would wrap 99999 round to another port
                raise ClusterError(f"--ray-address {self.address}: the port must be 1 to {MAX_PORT}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ClusterError(f"task retries must be a whole number >= 0, got {self.retries!r}")
        if self.enabled and not _has_module("ray"):
            raise ClusterError(f"running on Ray needs the ray package: {RAY_EXTRA}")
        if self.address is not None and self.address.startswith(CLIENT_SCHEME) and not _has_module("grpc"):
            raise ClusterError(
                f"--ray-address {self.address} connects through Ray Client, which needs the grpcio package: "
                f"{RAY_CLIENT_EXTRA} (or give the cluster's GCS address HOST:PORT)"
            )

    def reach(self) -> None:
        """ClusterError unless the port of ``address`` answers, as a gRPC server, within
        CONNECT_TIMEOUT seconds each (a local cluster, ``auto`` or none: nothing to try); before any
        long work."""
        if self.address not in (None, "auto"):
            _reachable(self.address)

    def describe(self) -> str:
        """``a local Ray cluster of 2 workers`` or ``the Ray cluster at ray://h:10001``."""
        if self.workers is not None:
            return f"a local Ray cluster of {self.workers} worker{'s' if self.workers != 1 else ''}"
        return f"the Ray cluster at {self.address}"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _has_module(name: str) -> bool:
    """Whether ``name`` can be imported here (without importing it)."""
    return importlib.util.find_spec(name) is not None


def _reachable(address: str) -> None:
    """ClusterError unless something listens on ``address``'s port within CONNECT_TIMEOUT seconds."""
    match = ADDRESS.match(address)
    assert match is not None  # Cluster.check
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({reason}, tried for {CONNECT_TIMEOUT:g} s); "
            "check the address and that the cluster is up (`ray status` on its head node)"
        ) from None
    if _has_module("grpc") and os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        _speaks_grpc(address, f"{match['host']}:{port}")


def _speaks_grpc(address: str, target: str) -> None:
    """ClusterError unless a gRPC server (Ray's GCS and Ray Client both are) answers at ``target``
    within CONNECT_TIMEOUT seconds: ray.init would otherwise wait for ever on another kind of port."""
    import grpc

    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])  # as Ray's own channels
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
    except grpc.FutureTimeoutError:
        raise ClusterError(
            f"{address} answers, but not as a Ray cluster does (no gRPC server there within {CONNECT_TIMEOUT:g} s): "
            "give the GCS port (6379 by default) or ray://HOST:10001, not e.g. the dashboard's (8265)"
        ) from None
    finally:
        channel.close()


def _auth_hint(cluster: Cluster) -> str:
    """What to try when a GCS address (HOST:PORT) refused this driver without token authentication:
    Ray >= 2.59 turns it on for the clusters ``ray start`` begins, and a driver given an address
    sends the token only under RAY_AUTH_MODE=token."""
    address = cluster.address or ""
    if address in ("", "auto") or address.startswith(CLIENT_SCHEME) or os.environ.get("RAY_AUTH_MODE") == "token":
        return ""
    return (
        "; if the cluster uses token authentication, set RAY_AUTH_MODE=token (with RAY_AUTH_TOKEN, or the "
        "head's token in ~/.ray/auth_token: `ray get-auth-token` there) before running"
    )


def _crash_reason(exc: BaseException) -> str:
    """The first line of a Ray system error, without Ray's boilerplate."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _import_failure(exc: BaseException) -> str | None:
    """The module a worker could not import, if that is what ``exc`` (a Ray error) says."""
    match = re.search(r"No module named '([^']+)'", str(exc))
    return match[1] if match else None


def add_cluster_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--workers N`` and ``--ray-address ADDRESS`` (mutually exclusive) on ``parser``, each run
    doing ``what`` (e.g. ``"run the cases"``); :class:`Cluster` takes the two values."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"{what} on a local Ray cluster of N workers (at most this machine's CPUs)",
    )
    where.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help=f"{what} on an existing Ray cluster: auto (this machine's), ray://HOST:PORT or HOST:PORT",
    )


class Session:
    """An open cluster; :meth:`run_unordered` runs tasks on it."""

    def __init__(self, ray: Any, cluster: Cluster) -> None:
        self._ray = ray
        self.cluster = cluster

    @property
    def cpus(self) -> int:
        """The cluster's CPUs: how many tasks run at once."""
        return int(self._ray.cluster_resources().get("CPU", 1))

    @property
    def gpus(self) -> int:
        """The GPUs (whole ones) of the cluster's live nodes that also have a CPU, where a task of
        one CPU and one GPU can start: 0 on a cluster of CPUs, or with GPUs only on a CPU-less node."""
        nodes = [node.get("Resources", {}) for node in self._ray.nodes() if node.get("Alive")]
        return sum(int(resources.get("GPU", 0)) for resources in nodes if resources.get("CPU", 0) >= 1)

    def put(self, value: Any) -> Any:
        """``value`` in the cluster's object store, sent once to every task that takes the reference."""
        return self._ray.put(value)

    def register(self, kind: type, to_bytes: Callable[[Any], bytes], from_bytes: Callable[[bytes], Any]) -> None:
        """Send every ``kind`` object as ``to_bytes(obj)``, read back by ``from_bytes`` (module-level,
        importable by name on the workers): for objects Ray's pickler cannot send (dimod's BQMs)."""
        self._ray.util.register_serializer(kind, serializer=to_bytes, deserializer=from_bytes)

    def run_unordered(
        self,
        function: Callable[..., Any],
        arguments: Sequence[tuple[Any, ...]],
        shared: Mapping[str, Any],
        gpus: int = 0,
    ) -> Iterator[tuple[int, Any]]:
        """``function(*arguments[i], **shared)`` as Ray tasks; yields ``(i, result)`` as each finishes,
        the result a :class:`Crashed` where the task's worker died every time. ``shared``: keyword
        arguments for every task, object references from :meth:`put` (resolved on the worker); so
        are the references among ``arguments[i]``. ``function`` must be importable by name on the
        workers (a module-level function). ``gpus``: GPUs each task holds (Ray sets its
        CUDA_VISIBLE_DEVICES, so "cuda" there is its own); at most :attr:`gpus`, or no task would start."""
        ray = self._ray
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=self.cluster.retries, retry_exceptions=False)(
            function
        )
        pending = {remote.remote(*args, **shared): i for i, args in enumerate(arguments)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done[0]), self._result(done[0], self.cluster.retries + 1)

    def pool(self, build: Callable[..., Callable[[Any], Any]], arguments: tuple[Any, ...], size: int) -> Pool:
        """``size`` Ray actors (one CPU each), each holding ``build(*arguments)``, built once on its
        worker (object references among ``arguments`` are resolved there: each actor fetches them
        once). Each actor holds its CPU until the pool is gone. An actor whose worker dies is not
        started again (Ray cannot rebuild one from object references safely): :meth:`Pool.map` then
        fails with one ClusterError line. ``build`` must be importable by name on the workers (a
        module-level function)."""
        actor = self._ray.remote(num_cpus=1, max_restarts=0)(Holder)
        return Pool(self, [actor.remote(build, *arguments) for _ in range(max(1, size))])

    def _result(self, reference: Any, tries: int) -> Any:
        """``ray.get(reference)``, a :class:`Crashed` where its worker died all ``tries`` times; a task's
        QubocompressError raised again as it is, a module the workers lack as one ClusterError line."""
        ray = self._ray
        try:
            return ray.get(reference)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, QubocompressError):
                raise cause from None
            module = _import_failure(exc)
            if module is not None:
                raise ClusterError(self._missing_module(module)) from None
            raise
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OutOfMemoryError,
            ray.exceptions.RayActorError,
        ) as exc:
            module = _import_failure(exc)
            if module is not None:
                raise ClusterError(self._missing_module(module)) from None
            return Crashed(f"its Ray worker died {tries} time{'s' if tries != 1 else ''}: {_crash_reason(exc)}")
        except ray.exceptions.RaySystemError as exc:
            module = _import_failure(exc)
            if module is None:
                raise
            raise ClusterError(self._missing_module(module)) from None

    def _missing_module(self, module: str) -> str:
        return (
            f"the workers of {self.cluster.describe()} cannot import {module!r}: install qubocompress "
            "(the same version) on every node of the cluster"
        )


class Holder:
    """The state of one :meth:`Session.pool` actor: the function ``build(*arguments)`` made."""

    def __init__(self, build: Callable[..., Callable[[Any], Any]], *arguments: Any) -> None:
        self._function = build(*arguments)

    def call(self, item: Any) -> Any:
        """The function applied to ``item``."""
        return self._function(item)


class Pool:
    """The actors of :meth:`Session.pool`."""

    def __init__(self, session: Session, actors: list[Any]) -> None:
        self._session = session
        self._actors = actors

    @property
    def size(self) -> int:
        """How many actors: how many items are worked on at once."""
        return len(self._actors)

    def map(self, items: Sequence[Any]) -> list[Any]:
        """The function of every actor applied to each item, the results in the items' order; each
        idle actor takes the next item. An actor whose worker died is a ClusterError."""
        ray = self._session._ray
        results: list[Any] = [None] * len(items)
        idle = list(self._actors)
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(items))[::-1]
        while queue or pending:
            while idle and queue:
                index, item = queue.pop()
                actor = idle.pop()
                pending[actor.call.remote(item)] = (index, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            result = self._session._result(done[0], tries=1)
            if isinstance(result, Crashed):
                raise ClusterError(f"an actor on {self._session.cluster.describe()} stopped: {result.reason}")
            results[index] = result
            idle.append(actor)
        return results


@contextmanager
def connect(cluster: Cluster) -> Iterator[Session]:
    """The open cluster (:class:`Cluster`); a local one is stopped at the end. ClusterError (one line)
    when Ray is missing or the cluster cannot be reached; an address's port is tried for a few
    seconds before anything else."""
    cluster.check()
    if not cluster.enabled:
        raise ClusterError("no Ray cluster given: pass --workers N or --ray-address")
    cluster.reach()
    import ray

    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    if cluster.workers is not None:
        options.update(address="local", num_cpus=cluster.workers)
    else:
        options["address"] = cluster.address
    try:
        ray.init(**options)
    # RuntimeError: e.g. a Ray Client version mismatch; ValueError: e.g. Ray Client's packages missing
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = _crash_reason(exc) + _auth_hint(cluster)
        raise ClusterError(f"cannot connect to {cluster.describe()}: {reason}") from None
    try:
        yield Session(ray, cluster)
    finally:
        ray.shutdown()
