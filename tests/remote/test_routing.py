"""Replica choice and ejection: rendezvous-hash affinity and its fallbacks, the circuit breaker's
closed / open / half-open cycle on a fake clock, and the health monitor's verdicts."""

from __future__ import annotations

from collections import Counter

from seekserve.engines.remote.client import ReplicaClient
from seekserve.engines.remote.health import CircuitBreaker, HealthMonitor
from seekserve.engines.remote.profiles import PROFILES
from seekserve.engines.remote.router import Replica, choose, rendezvous_order
from seekserve.settings import RemoteEngineSettings
from seekserve.tenancy.identity import Caller, RequestIdentity


def affinity_key(key_digest: bytes, user_id: str | None) -> bytes:
    """The affinity the gateway derives for (key, user_id)."""
    return RequestIdentity.of(Caller(key_digest), user_id, cache_secret=b"").affinity


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replicas(n: int, clock: FakeClock | None = None, max_in_flight: int = 4) -> list[Replica]:
    settings = RemoteEngineSettings.model_validate({
        "upstream": "vllm", "max_in_flight": max_in_flight,
        "replicas": [{"base_url": f"http://10.0.0.{i}:8000", "model": "m"} for i in range(n)]})
    return [Replica(ReplicaClient(r, settings, PROFILES["vllm"], engine_name="e"),
                    CircuitBreaker(3, 10.0, clock=clock or FakeClock()), max_in_flight)
            for r in settings.replicas]


def first_choice(pool: list[Replica], user: str, key: bytes = b"key") -> Replica:
    chosen = choose(rendezvous_order(affinity_key(key, user), pool), set())
    assert chosen is not None
    return chosen


def test_one_user_always_gets_the_same_replica_and_users_spread() -> None:
    pool = replicas(4)
    for user in ("alice", "bob", "carol"):
        assert len({first_choice(pool, user).name for _ in range(20)}) == 1
    spread = Counter(first_choice(pool, f"user-{i}").name for i in range(400))
    assert len(spread) == 4
    assert min(spread.values()) > 60  # about 100 each


def test_the_same_user_under_two_keys_is_routed_independently() -> None:
    pool = replicas(8)
    differ = sum(first_choice(pool, f"u{i}", b"key-1") is not first_choice(pool, f"u{i}",
                                                                             b"key-2")
                 for i in range(50))
    assert differ > 25  # 7 in 8 expected


def test_removing_a_replica_moves_only_its_own_users() -> None:
    pool = replicas(4)
    before = {f"user-{i}": first_choice(pool, f"user-{i}") for i in range(200)}
    gone = pool[2]
    smaller = [r for r in pool if r is not gone]
    for user, replica in before.items():
        after = first_choice(smaller, user)
        if replica is not gone:
            assert after is replica, user


def test_an_unhealthy_replica_sends_its_users_to_their_second_choice() -> None:
    pool = replicas(3)
    order = rendezvous_order(affinity_key(b"key", "alice"), pool)
    order[0].healthy = False
    assert choose(order, set()) is order[1]
    order[0].healthy = True
    assert choose(order, set()) is order[0]


def test_a_saturated_replica_spills_to_the_next_then_nothing_is_left() -> None:
    pool = replicas(2, max_in_flight=1)
    order = rendezvous_order(affinity_key(b"key", "alice"), pool)
    order[0].in_flight = 1
    assert choose(order, set()) is order[1]
    order[1].in_flight = 1
    assert choose(order, set()) is None


def test_a_retry_prefers_a_replica_not_yet_tried() -> None:
    pool = replicas(3)
    order = rendezvous_order(affinity_key(b"key", "alice"), pool)
    assert choose(order, {order[0]}) is order[1]
    assert choose(order, set(order)) is order[0]  # all tried: back to the first that can


def test_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed" and breaker.acquire()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.available() and not breaker.acquire()
    assert breaker.openings == 1


def test_breaker_half_open_lets_one_trial_through_and_closes_on_its_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.failure()
    clock.now += 9.9
    assert not breaker.acquire()
    clock.now += 0.2
    assert breaker.state == "half_open"
    assert breaker.acquire()
    assert not breaker.acquire(), "only one trial at a time"
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.acquire() and breaker.acquire()


def test_a_failed_trial_opens_the_circuit_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.now += 5.0
    assert breaker.acquire()
    breaker.failure()
    assert breaker.state == "open" and breaker.openings == 2
    clock.now += 4.9
    assert not breaker.acquire()
    clock.now += 0.1
    assert breaker.acquire()


def test_a_trial_without_verdict_is_given_back() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.acquire()
    breaker.release()  # the client left before the upstream answered
    assert breaker.state == "half_open" and breaker.acquire()


def test_an_open_replica_is_skipped_until_its_cooldown_ends() -> None:
    clock = FakeClock()
    pool = replicas(2, clock)
    order = rendezvous_order(affinity_key(b"key", "alice"), pool)
    for _ in range(3):
        order[0].breaker.failure()
    assert not order[0].serving
    assert choose(order, set()) is order[1]
    clock.now += 10.0
    assert choose(order, set()) is order[0]  # the half-open trial


class Probe:
    def __init__(self, name: str, answers: list[bool]) -> None:
        self.name = name
        self.healthy = True
        self.answers = answers

    async def probe(self) -> bool:
        return self.answers.pop(0)


async def test_health_monitor_marks_replicas_by_their_last_probe() -> None:
    a, b = Probe("a", [True, False, True]), Probe("b", [False, False, True])
    monitor = HealthMonitor([a, b], interval_s=5)
    await monitor.check_all()
    assert (a.healthy, b.healthy) == (True, False)
    await monitor.check_all()
    assert (a.healthy, b.healthy) == (False, False)
    await monitor.check_all()
    assert (a.healthy, b.healthy) == (True, True)
