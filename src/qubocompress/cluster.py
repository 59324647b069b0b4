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
"""

from __future__ import annotations

import importlib.util
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qubocompress.errors import ClusterError, QubocompressError

RAY_EXTRA = "pip install 'qubocompress[ray]'"
# Times Ray runs a task again after its worker died (a task's own exception is not retried).
DEFAULT_RETRIES = 2
# Seconds to wait for an address's TCP port before calling the cluster unreachable.
CONNECT_TIMEOUT = 5.0
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
        if self.address is not None and self.address != "auto" and not ADDRESS.match(self.address):
            raise ClusterError(f"--ray-address must be auto, ray://HOST:PORT or HOST:PORT, got {self.address!r}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ClusterError(f"task retries must be a whole number >= 0, got {self.retries!r}")
        if self.enabled and importlib.util.find_spec("ray") is None:
            raise ClusterError(f"running on Ray needs the ray package: {RAY_EXTRA}")

    def describe(self) -> str:
        """``a local Ray cluster of 2 workers`` or ``the Ray cluster at ray://h:10001``."""
        if self.workers is not None:
            return f"a local Ray cluster of {self.workers} worker{'s' if self.workers != 1 else ''}"
        return f"the Ray cluster at {self.address}"


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


def _crash_reason(exc: BaseException) -> str:
    """The first line of a Ray system error, without Ray's boilerplate."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _import_failure(exc: BaseException) -> str | None:
    """The module a worker could not import, if that is what ``exc`` (a Ray error) says."""
    match = re.search(r"No module named '([^']+)'", str(exc))
    return match[1] if match else None


class Session:
    """An open cluster; :meth:`run_unordered` runs tasks on it."""

    def __init__(self, ray: Any, cluster: Cluster) -> None:
        self._ray = ray
        self.cluster = cluster

    @property
    def cpus(self) -> int:
        """The cluster's CPUs: how many tasks run at once."""
        return int(self._ray.cluster_resources().get("CPU", 1))

    def put(self, value: Any) -> Any:
        """``value`` in the cluster's object store, sent once to every task that takes the reference."""
        return self._ray.put(value)

    def run_unordered(
        self, function: Callable[..., Any], arguments: Sequence[tuple[Any, ...]], shared: Mapping[str, Any]
    ) -> Iterator[tuple[int, Any]]:
        """``function(*arguments[i], **shared)`` as Ray tasks; yields ``(i, result)`` as each finishes,
        the result a :class:`Crashed` where the task's worker died every time. ``shared``: keyword
        arguments for every task, object references from :meth:`put` (resolved on the worker).
        ``function`` must be importable by name on the workers (a module-level function)."""
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=self.cluster.retries, retry_exceptions=False)(function)
        pending = {remote.remote(*args, **shared): i for i, args in enumerate(arguments)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                result = ray.get(done[0])
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
            ) as exc:
                tries = self.cluster.retries + 1
                result = Crashed(f"its Ray worker died {tries} time{'s' if tries != 1 else ''}: {_crash_reason(exc)}")
            except ray.exceptions.RaySystemError as exc:
                module = _import_failure(exc)
                if module is None:
                    raise
                raise ClusterError(self._missing_module(module)) from None
            yield index, result

    def _missing_module(self, module: str) -> str:
        return (
            f"the workers of {self.cluster.describe()} cannot import {module!r}: install qubocompress "
            "(the same version) on every node of the cluster"
        )


@contextmanager
def connect(cluster: Cluster) -> Iterator[Session]:
    """The open cluster (:class:`Cluster`); a local one is stopped at the end. ClusterError (one line)
    when Ray is missing or the cluster cannot be reached; an address's port is tried for a few
    seconds before anything else."""
    cluster.check()
    if not cluster.enabled:
        raise ClusterError("no Ray cluster given: pass --workers N or --ray-address")
    if cluster.address not in (None, "auto"):
        _reachable(cluster.address)
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
    except (ConnectionError, RuntimeError) as exc:  # RuntimeError: e.g. a Ray Client version mismatch
        raise ClusterError(f"cannot connect to {cluster.describe()}: {_crash_reason(exc)}") from None
    try:
        yield Session(ray, cluster)
    finally:
        ray.shutdown()
