"""Reaching Ray for `ingest --ray`: the address checked, the instance it
leads to asked first whether it answers, and the private local instance
started when `auto` finds none that does.

Ray itself keeps retrying an instance that does not answer (a hung or
half-dead one, another user's, a stale address file) for about 15 minutes
before it gives up; one question with a deadline tells within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from pathlib import Path

import grpc
import ray
from ray._private import (
    ray_constants,  # see start_local
    services,
)
from ray._private.grpc_utils import init_grpc_channel
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from ray.exceptions import RayError

from rag.errors import RagError

log = logging.getLogger(__name__)

# A local instance started here stays small: this process, its parser
# workers and the model need the memory more than Ray's object store.
OBJECT_STORE_BYTES = 256 * 2**20
# How long an instance has to answer: a live one answers in milliseconds.
ANSWER_SECONDS = 10.0
# Starts of a private local instance tried before its failure is the error.
START_ATTEMPTS = 2
_ADDRESS = re.compile(r"^(auto|ray://\S+|[\w.\-]+:\d+)$")


def check_address(address: str) -> str:
    """`auto`, `ray://host:port` or `host:port`; anything else is refused
    (a folder after a bare `--ray` would be taken for its address)."""
    if not _ADDRESS.match(address):
        raise ValueError(
            f"--ray takes a cluster address (auto, ray://HOST:10001 or HOST:6379), not "
            f"{address!r}; put --ray after the paths, or write --ray auto"
        )
    return address


def connect(address: str) -> bool:
    """Join the cluster at `address`; `auto`: the one RAY_ADDRESS names, else
    the local instance Ray finds if it answers, else a private local
    instance started here. True if this call connected (and should
    disconnect). An address that does not answer is a `RagError` naming it,
    unless `auto` found it on its own: then it is passed over, with a warning."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init
    named = os.environ.get(ray_constants.RAY_ADDRESS_ENVIRONMENT_VARIABLE, "")
    if address != "auto":
        _join(address, "")
    elif named:
        _join(named, " (from RAY_ADDRESS)")
    else:
        _join_found_or_start()
    return True


def _join(address: str, source: str) -> None:
    if address.startswith("ray://"):  # Ray Client: its connection has its own timeout
        target = address
    else:
        try:
            canonical = services.canonicalize_bootstrap_address(address)
        except ValueError as exc:
            raise RagError(f"Cannot use the Ray address {address}{source}: {exc}") from None
        if canonical is None:  # RAY_ADDRESS=local
            start_local()
            return
        silence = _silence(canonical)
        if silence:
            then = (
                ", or unset RAY_ADDRESS so that --ray auto starts a local instance"
                if source
                else " or give the address of one that runs"
            )
            raise RagError(
                f"The Ray cluster at {address}{source} did not answer within "
                f"{ANSWER_SECONDS:g} s ({silence}). Start it (ray start --head){then}."
            )
        target = canonical
    try:
        ray.init(address=target, log_to_driver=False)
    except (ConnectionError, RayError) as exc:
        raise RagError(f"Cannot reach the Ray cluster at {address}{source}: {exc}") from exc


def _join_found_or_start() -> None:
    """The local instance Ray would join for `auto` (its address file, else
    a running GCS), if it answers; else a private one."""
    try:
        found = services.canonicalize_bootstrap_address("auto")
    except ConnectionError:  # none running
        found = None
    if found is not None:
        silence = _silence(found)
        if not silence:
            ray.init(address=found, log_to_driver=False)
            return
        log.warning(
            "ingest --ray: the local Ray instance at %s did not answer within %g s (%s); "
            "starting a private local Ray instance for this run instead (if that one is "
            "yours, `ray stop` ends it).",
            found, ANSWER_SECONDS, silence,
        )  # fmt: skip
    start_local()


def _silence(address: str) -> str:
    """Why the GCS at `address` (host:port) did not answer one question
    within ANSWER_SECONDS, or "" when it did. Asked as Ray's own clients
    ask it (TLS and token as configured)."""
    channel = init_grpc_channel(address)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
        stub.GetClusterId(request, timeout=ANSWER_SECONDS)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "no answer"
        return f"{code.name.lower()}: {exc.details()}"
    finally:
        channel.close()
    return ""


def start_local(cpus: int | None = None) -> None:
    """Start a small local Ray instance that listens on the loopback address
    only and asks for its token: no dashboard, no usage statistics, a small
    object store. Whoever reaches a Ray port can run code as this user.
    Always a new one (`local`): never the one RAY_ADDRESS or Ray's address
    file names."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init
    _private_token()
    # Ray's servers listen on every interface unless the node's address is
    # 127.0.0.1, and Ray turns 127.0.0.1 into the machine's outward address
    # unless "clusters" are off (a constant its services module reads at
    # each call): off here, for this local instance only.
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                _init_local(cpus)
                return
            except Exception as exc:  # Ray raises a bare Exception for this
                if "timed out during startup" not in str(exc) or attempt == START_ATTEMPTS:
                    raise
                # Ray waits a fixed 30 s for its raylet to register; a busy
                # machine can take longer. The half-started processes share
                # this process's fate and end with it.
                log.warning("ingest --ray: the local Ray instance did not start (%s); trying "
                            "once more", exc)  # fmt: skip
                ray.shutdown()
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters


def _init_local(cpus: int | None) -> None:
    ray.init(
        address="local",
        num_cpus=cpus or len(os.sched_getaffinity(0)),
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )


def _private_token() -> None:
    """Make sure the token a new local instance will use is readable by this
    user alone. Ray turns token authentication on for a new local instance
    (unless RAY_AUTH_MODE says otherwise) and writes a missing token file
    with the umask's mode, readable by every local user as a rule."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
        return
    # Written aside at 0600, then claimed with a hard link, which fails rather
    # than replace a token another process wrote meanwhile.
    aside = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))  # as Ray's own generator: 256 bits
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)
