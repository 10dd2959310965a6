"""A pool of sampler actors: spread work, survive actor deaths, sync weights.

Prompts are cut into chunks; each actor works on one chunk at a time. A chunk
whose actor dies is sent again (to the restarted actor or another one), and a
chunk's result is accepted once, so no prompt is lost or sampled twice. A
restarted actor comes back with its initial weights, so the pool gives it the
latest weights before giving it more work: through the object store
(``update_weights``), or by rebuilding the weight-sync group with every actor
and broadcasting the learner's current weights again (``broadcast_weights``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from rayalign.errors import RayalignError
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.vllm_backend import engine_env
from rayalign.rollout.weight_sync import Bucket, GroupAddress, LoraSync, create_store, join_group, send
from rayalign.rollout.worker import RolloutWorker
from rayalign.types import Prompt, Rollout, SamplingSettings

_ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
RESTART_TIMEOUT_S = 600
SYNC_TIMEOUT_S = 120
"""A collective sync that makes no progress for this long fails (a peer died)."""

TensorsFor = Callable[[Sequence[str]], AbstractContextManager[Mapping[str, "object"]]]


@dataclass(frozen=True)
class WeightSource:
    """Where a collective sync reads the weights: rank 0 of the learners."""

    buckets: tuple[Bucket, ...]
    tensors_for: TensorsFor
    """names -> a context giving those tensors (a ZeRO-3 learner gathers them there)."""
    backend: str
    """gloo (CPU) or nccl (GPU)."""
    device: str
    """Where the send buffer lives: cpu or cuda."""
    resendable: bool
    """Whether rank 0 can read the weights alone (not under ZeRO-3), to give a restarted sampler."""
    lora: LoraSync | None = None
    """The buckets hold LoRA adapters only; each engine merges them into its starting weights."""


@dataclass(frozen=True)
class PoolResources:
    """What each sampler actor asks of Ray."""

    num_workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    resource: str = ""
    """Custom resource (1 unit per actor), e.g. rollout."""
    max_restarts: int = 2

    @classmethod
    def from_config(cls, cfg) -> PoolResources:
        r = cfg.rollout
        return cls(r.num_workers, r.cpus_per_worker, r.gpus_per_worker, r.resource, r.max_restarts)


class PoolError(RayalignError):
    """Work that could not be completed after every retry."""


class RolloutPool:
    def __init__(self, engine: EngineConfig, resources: PoolResources):
        self.engine, self.resources = engine, resources
        actor_cls = ray.remote(RolloutWorker)
        options = dict(
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
            max_restarts=resources.max_restarts,
            max_task_retries=0,  # the pool retries chunks itself, exactly once each
            runtime_env={"env_vars": engine_env(engine)},
        )
        if resources.resource:
            options["resources"] = {resources.resource: 1}
        self.actors = [actor_cls.options(**options).remote(engine) for _ in range(resources.num_workers)]
        self.policy_version = 0
        self._weights_ref = None
        self._source: WeightSource | None = None
        self._group = None
        self._store = None  # the group's rendezvous (TCPStore), kept as long as the group
        self._generation = 0
        self.retries = 0
        """Chunks sent again after an actor died (for logs and tests)."""
        self.stale: set[int] = set()
        """Actors that lost their weights (died and restarted) and get the latest before any work."""

    def __getstate__(self) -> dict:
        # The pool travels to the learner's rank 0: without its group, source or lock.
        return self.__dict__ | {"_group": None, "_store": None, "_source": None, "_lock_": None}

    @property
    def weights_lock(self) -> threading.RLock:
        """Held while weights change: a learner's update + sync, and every broadcast."""
        if getattr(self, "_lock_", None) is None:
            self._lock_ = threading.RLock()
        return self._lock_

    def wait_ready(self, timeout_s: float = 600) -> list:
        """Block until every actor has built its engine; returns their WorkerInfo."""
        return ray.get([a.info.remote() for a in self.actors], timeout=timeout_s)

    def generate(
        self, prompts: Sequence[Prompt], settings: SamplingSettings, chunk_size: int | None = None
    ) -> list[Rollout]:
        """Rollouts for every prompt, in prompt order, each prompt sampled exactly once."""
        if not prompts:
            return []
        size = chunk_size or math.ceil(len(prompts) / len(self.actors))
        chunks = [list(prompts[i : i + size]) for i in range(0, len(prompts), size)]
        results = _Schedule(self, chunks, settings).run()
        return [r for i in range(len(chunks)) for r in results[i]]

    def _wake(self, actor: int) -> bool:
        """Whether a restarting actor is back; on return it holds the latest weights."""
        try:
            ray.get(self.actors[actor].info.remote(), timeout=5)
            if self._weights_ref is not None:
                ray.get(self.actors[actor].update_weights.remote(self._weights_ref, self.policy_version))
            elif self._source is not None:
                self._resend()
            return True
        except (ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return False  # still restarting

    def update_weights(self, state: Mapping, version: int | None = None) -> int:
        """Push a HF-named state dict to every sampler through the object store."""
        self.policy_version = self.policy_version + 1 if version is None else version
        self._weights_ref, self._source = ray.put(dict(state)), None
        ray.get([a.update_weights.remote(self._weights_ref, self.policy_version) for a in self.actors])
        return self.policy_version

    def broadcast_weights(self, source: WeightSource, version: int) -> int:
        """Collective sync from this process (the learners' rank 0) to every
        sampler, in ``source.buckets``; the first call builds the group, a
        failed one (a sampler died) rebuilds it once with every actor back.
        Returns the bytes broadcast."""
        with self.weights_lock:
            self._source, self._weights_ref = source, None
            try:
                return self._broadcast(source, version)
            except (ray.exceptions.RayError, RuntimeError) as e:  # a sampler died, or the group broke
                self._group = None
                if not source.resendable:
                    raise PoolError(f"weight broadcast failed and a ZeRO-3 learner cannot resend alone: {e}") from e
                self.wait_ready(RESTART_TIMEOUT_S)
                return self._broadcast(source, version)

    def _resend(self) -> None:
        """A restarted sampler: rebuild the group, broadcast the current weights again."""
        with self.weights_lock:
            if not self._source.resendable:
                raise PoolError(
                    "a sampler restarted; ZeRO-3 learners cannot resend weights outside a step: "
                    "use rl.sync: object_store"
                )
            self._group = None
            self._broadcast(self._source, self.policy_version)

    def _broadcast(self, source: WeightSource, version: int) -> int:
        if self._group is None:
            self._group = self._open_group(source.backend)
        refs = [a.receive_weights.remote(source.buckets, version, source.lora) for a in self.actors]
        sent = send(self._group, source.buckets, source.tensors_for, source.device)
        ray.get(refs, timeout=SYNC_TIMEOUT_S)
        self.policy_version = version
        return sent

    def _open_group(self, backend: str):
        """Rank 0 here, then each engine worker of each actor (``tensor_parallel_size`` per actor)."""
        per_actor = self.engine.tensor_parallel_size
        world_size = 1 + per_actor * len(self.actors)
        host = ray.util.get_node_ip_address()
        store = create_store(host, world_size, SYNC_TIMEOUT_S)
        self._generation += 1
        address = GroupAddress(host, store.port, world_size, backend, f"{id(self)}-{self._generation}", SYNC_TIMEOUT_S)
        refs = [a.join_weight_group.remote(address, 1 + i * per_actor) for i, a in enumerate(self.actors)]
        group = join_group(address, 0, store)
        ray.get(refs, timeout=SYNC_TIMEOUT_S)
        self._store = store  # the rendezvous lives as long as the group
        return group

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class _Schedule:
    """One ``generate`` call: chunks to actors, one at a time each, with retries.

    An actor whose chunk failed is parked until Ray has restarted it (and it
    has the latest weights); its chunk goes back to the front of the queue.
    """

    def __init__(self, pool: RolloutPool, chunks: list[list[Prompt]], settings: SamplingSettings):
        self.pool, self.chunks, self.settings = pool, chunks, settings
        self.queue = list(range(len(chunks)))
        # An actor that restarted since it last got weights waits for them (``_wake``) before any work.
        self.parked: list[int] = sorted(pool.stale)
        self.idle = [i for i in range(len(pool.actors)) if i not in pool.stale]
        self.running: dict = {}  # ObjectRef -> (chunk, actor)
        self.attempts = [0] * len(chunks)
        self.results: dict[int, list[Rollout]] = {}

    def run(self) -> dict[int, list[Rollout]]:
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while self.queue or self.running:
            self._dispatch()
            if not self.running:
                if time.monotonic() > deadline:
                    raise PoolError(f"no sampler came back within {RESTART_TIMEOUT_S}s")
                time.sleep(0.5)
                self._unpark()
                continue
            done, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            for ref in done:
                self._collect(ref)
            self._unpark()
        return self.results

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            chunk, actor = self.queue.pop(0), self.idle.pop(0)
            ref = self.pool.actors[actor].generate.remote(self.chunks[chunk], self.settings)
            self.running[ref] = (chunk, actor)

    def _collect(self, ref) -> None:
        chunk, actor = self.running.pop(ref)
        try:
            rollouts = ray.get(ref)
        except _ACTOR_LOST as e:
            self.attempts[chunk] += 1
            self.pool.retries += 1
            if self.attempts[chunk] > self.pool.resources.max_restarts:
                raise PoolError(f"chunk {chunk} failed {self.attempts[chunk]} times; last error: {e}") from e
            self._park(chunk, actor)
            return
        if self.pool.policy_version > 0 and any(r.policy_version == 0 for r in rollouts):
            # It restarted with its initial weights between two calls (no failure seen): sample again.
            self.attempts[chunk] += 1
            self._park(chunk, actor)
            return
        self.results.setdefault(chunk, rollouts)  # first result wins: never twice
        self.idle.append(actor)

    def _park(self, chunk: int, actor: int) -> None:
        self.queue.insert(0, chunk)
        self.parked.append(actor)
        self.pool.stale.add(actor)

    def _unpark(self) -> None:
        for actor in list(self.parked):
            try:
                back = self.pool._wake(actor)
            except ActorDiedError:  # out of restarts: gone for good
                self.parked.remove(actor)
                if not self.idle and not self.parked and not self.running:
                    raise PoolError("every sampler actor has died") from None
                continue
            if back:
                self.parked.remove(actor)
                self.pool.stale.discard(actor)
                self.idle.append(actor)
