"""Which replica serves a request: rendezvous (highest-random-weight) hashing of the caller's
isolation key over the replicas, so one user stays on the replica that holds its prefix cache,
falling to the next in that user's order when a replica is unhealthy, ejected or full."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from seekserve.engines.remote.client import ReplicaClient
from seekserve.engines.remote.health import CircuitBreaker


class Replica:
    """One upstream replica's live state in this process: its client, last health check,
    circuit breaker and requests in flight."""

    def __init__(self, client: ReplicaClient, breaker: CircuitBreaker, max_in_flight: int
                 ) -> None:
        self.client = client
        self.name = client.base_url
        self.breaker = breaker
        self.max_in_flight = max_in_flight
        self.healthy = True  # until a health check says otherwise
        self.in_flight = 0
        self.failures_total = 0

    async def probe(self) -> bool:
        return await self.client.probe()

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.max_in_flight

    @property
    def serving(self) -> bool:
        """Healthy and not ejected: what /ready and the metrics count."""
        return self.healthy and self.breaker.state != "open"


def rendezvous_order(affinity: bytes, replicas: Sequence[Replica]) -> list[Replica]:
    """The replicas from most to least preferred for `affinity`. Adding or removing a replica
    moves only the users whose first choice it is (or becomes)."""
    def weight(replica: Replica) -> bytes:
        return hashlib.blake2b(affinity + replica.name.encode(), digest_size=8).digest()

    return sorted(replicas, key=weight, reverse=True)


def choose(order: Sequence[Replica], tried: set[Replica]) -> Replica | None:
    """The first replica in `order` that can take a request now (healthy, circuit letting it
    through, room in flight), preferring one this request has not tried yet; its breaker's
    half-open trial is claimed if it has one."""
    for fresh_only in (True, False):
        for replica in order:
            if fresh_only and replica in tried:
                continue
            if replica.healthy and not replica.saturated and replica.breaker.acquire():
                return replica
    return None
