"""Budget mode's store against a reference model, on a real redis-server: random sequences of reservations (a few
users and departments, random subsets of windows, limits low enough that refusals happen), settlements (true usage
other than the reservation's, sent twice, never sent: a killed process; let through while the store failed;
cancelled), a clock that moves by fractions of a second up to days (across month ends, sometimes back a little),
and rare zone changes. After every step the store's verdict (reserved, refused or downgraded, the window and quota
that decided, used, amount, limit) and `read()` of every window of every principal are compared with the model.

The model keeps per principal and window its buckets (rolling 24 h: 5 minutes, the latest boundary at least 24 h
ago up to now; the minute: 1 second, the 60 whole seconds before the current one and the current one; a calendar
window: the local day, ISO week, month or year in the zone; the calls in flight: one bucket) and the calls in flight
at their worst case. A window's bucket never goes back (a clock that went back counts in the newest). Expired
reservations are reclaimed where lua_state says: on a refusal (or downgrade) that would happen, and when a window
other than the minute turns, for every window of that principal the script call has loaded; a `read` reclaims in
the window it reads. A calendar window's turn moves the calls still in flight into its new bucket."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from otel_tokens.quota.budget.store import REFUSED, RESERVED, Charge, RedisBudgetStore, Settlement
from otel_tokens.quota.vocabulary import DEPARTMENT, USER, QuotaScope
from tests.support.budget import packed_windows
from tests.support.budget_model import (
    DEPARTMENT_WINDOWS,
    DEPARTMENTS,
    KEEP,
    KIND,
    LEASE,
    USER_WINDOWS,
    USERS,
    ZONES,
    Model,
)
from tests.support.budget_store import Clock
from tests.support.redis_server import RedisServer


def prefix_of(scope: QuotaScope, window: str) -> str:
    return "" if window == scope.window else f"{window}."


class Run:
    """One seeded sequence against one store and the model."""

    def __init__(self, url: str, seed: int, cluster: bool = False) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.seed = seed
        start = datetime(2026 + self.rng.randrange(3), self.rng.randrange(1, 13), 1, tzinfo=timezone.utc).timestamp()
        self.clock = Clock(start + self.rng.uniform(-3 * 86400, 3 * 86400))
        self.store = RedisBudgetStore(url, timeout=2.0, clock=self.clock)
        self.model = Model()
        self.zone = "UTC"
        self.pending: list[dict] = []  # reservations made: charges, amount, when; settled how often
        self.count = 0
        self.log: list[str] = []
        # per principal: its windows (the scope's own first) and their limits, redrawn rarely (a quota file change)
        self.plans: dict[tuple[str, str], list[Charge]] = {}
        for scope, names in ((USER, USERS), (DEPARTMENT, DEPARTMENTS)):
            for name in names:
                self.plans[(scope.name, name)] = self.plan(scope, name)

    def plan(self, scope: QuotaScope, name: str) -> list[Charge]:
        rng = self.rng
        pool = USER_WINDOWS if scope is USER else DEPARTMENT_WINDOWS
        chosen = [pool[0], *(w for w in pool[1:] if rng.random() < 0.45)]
        out = []
        for window in chosen:
            if window == "minute":
                out.append(Charge(scope, name, 0, 0, rng.choice([None, 400, 900]), rng.choice([None, 3, 6]), 1.0,
                                  None, window))
            elif window == "concurrent":
                out.append(Charge(scope, name, 0, 0, rng.choice([1, 2, 3]), None, 1.0, None, window))
            else:
                refuse = rng.choice([1.0, 1.0, 0.8, None])
                downgrade = rng.choice([None, None, 0.5])
                out.append(Charge(scope, name, 0, 0, rng.choice([None, 300, 1000, 3000, 10000]),
                                  rng.choice([None, 2000, 9000]), refuse, downgrade, window))
        return out

    # --- what the store is sent, as the model sees it ------------------------------------------------------
    def shift(self) -> int | None:
        if self.zone == "UTC":
            return None
        moment = datetime.fromtimestamp(self.clock.t, timezone.utc)
        return int(ZoneInfo(self.zone).utcoffset(moment).total_seconds())

    def kind(self, window: str) -> str:
        k = KIND[window]
        if k in "rn":
            return k
        if k == "k":
            return f"k{LEASE:g}"
        shift = self.shift()
        if shift is None:
            return "m" if k == "m" else f"{k}0"
        return f"{k}{shift}"

    def groups(self, charges: list[Charge]) -> list[tuple[str, list[tuple[str, str]], list[Charge]]]:
        out: list[tuple[str, list[tuple[str, str]], list[Charge]]] = []
        for c in charges:
            key = self.store.keys(c.scope, c.principal)[0]
            if not out or out[-1][0] != key:
                out.append((key, [], []))
            out[-1][1].append((prefix_of(c.scope, c.window), self.kind(c.window)))
            out[-1][2].append(c)
        return out

    def parts(self, items: list[Settlement]) -> list:
        return [(key, wins, item) for item in items for key, wins, _ in self.groups(list(item.charges))]

    # --- the steps -----------------------------------------------------------------------------------------
    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.40:
            self.reserve()
        elif roll < 0.62:
            self.settle()
        elif roll < 0.92:
            self.advance()
        elif roll < 0.935:
            self.zone = rng.choice(ZONES)
            self.store.set_zone(self.zone)
            self.log.append(f"zone {self.zone}")
        elif roll < 0.95:
            scope_name, name = rng.choice(list(self.plans))
            scope = USER if scope_name == "user" else DEPARTMENT
            self.plans[(scope_name, name)] = self.plan(scope, name)
            self.log.append(f"plan {name} {[c.window for c in self.plans[(scope_name, name)]]}")
        else:
            self.let_through()
        self.compare()

    def advance(self) -> None:
        rng = self.rng
        kind = rng.random()
        if kind < 0.3:
            dt = rng.uniform(0.01, 0.99)
        elif kind < 0.55:
            dt = rng.uniform(1, 30)
        elif kind < 0.75:
            dt = rng.uniform(30, 900)
        elif kind < 0.85:
            dt = rng.uniform(900, 6 * 3600)
        elif kind < 0.92:
            dt = rng.uniform(6 * 3600, 3 * 86400)
        elif kind < 0.96:  # to just before or after a UTC month's end (and so near a local one)
            now = datetime.fromtimestamp(self.clock.t, timezone.utc)
            month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
            dt = month - self.clock.t + rng.uniform(-40000, 40000)
            dt = max(dt, 0.5)
        else:
            dt = -rng.uniform(0.1, 400)
        self.clock.t = round(self.clock.t + dt, 3) if rng.random() < 0.5 else self.clock.t + dt
        self.model.now = self.clock.t
        self.log.append(f"advance {dt:.3f} -> {self.clock.t!r}")

    def charges(self) -> list[Charge]:
        rng = self.rng
        user = rng.choice(USERS)
        dept = rng.choice(DEPARTMENTS)
        who = rng.random()
        out: list[Charge] = []
        if who < 0.8:
            out += self.plans[("user", user)]
        if who > 0.2 or not out:
            out += self.plans[("department", dept)]
        return out

    def reserve(self) -> None:
        rng = self.rng
        charges = self.charges()
        self.count += 1
        rid = f"r{self.count}"
        tokens = rng.choice([0, 1, 50, 120, 300, 800])
        cost = rng.choice([0, 0, 100, 700, 1500])
        ttl = rng.choice([30.0, 120.0, 600.0, 7200.0])
        carried: list[Settlement] = []
        if self.pending and rng.random() < 0.3:
            carried = [self.settlement(p) for p in rng.sample(self.pending, min(len(self.pending),
                                                                                rng.randint(1, 3)))]
        reserve = self.model.reserve_cluster if self.cluster else self.model.reserve
        model = reserve(rid, ttl, self.groups(charges), tokens, cost, self.parts(carried))
        sent = tuple(charges) if rng.random() < 0.5 else charges
        verdict = self.store.reserve(rid, ttl, sent, carried, (tokens, cost))
        self.log.append(f"reserve {rid} {[(c.principal, c.window) for c in charges]} ({tokens}, {cost}) ttl {ttl} "
                        f"carried {[(s.reservation, s.tokens, s.cost, s.held) for s in carried]} -> {verdict}")
        if model[0] == RESERVED:
            assert verdict.status == RESERVED, self.fail(f"model reserved, store {verdict}")
            self.pending.append({"charges": tuple(charges), "rid": rid, "at": self.clock.t, "sent": 0})
        else:
            status, i, q, used, amount, limit, *why = model
            got = (verdict.status, verdict.charge, verdict.quota, verdict.used, verdict.amount, verdict.limit)
            want = (status, charges[i], ("tokens", "cost")[q], used, amount, limit)
            if status == REFUSED:
                got += (verdict.retry_after, verdict.never, verdict.calendar)
                want += (why[0], why[1], tuple(charges[j] for j in why[2]))
            assert got == want, self.fail(f"store {got}, model {want}")

    def settlement(self, p: dict) -> Settlement:
        rng = self.rng
        p["sent"] += 1
        tokens = rng.choice([0, 10, 90, 400])
        cost = rng.choice([0, 50, 3000])
        if p["sent"] > 1 and "item" in p and rng.random() < 0.7:
            return p["item"]  # the same settlement again
        item = Settlement(p["charges"], p["rid"], tokens, cost, sent=rng.random() < 0.9)
        p.setdefault("item", item)
        return item

    def settle(self) -> None:
        rng = self.rng
        self.pending = [p for p in self.pending if self.clock.t - p["at"] < 20 * 3600]  # marks last 24 h
        if not self.pending:
            return
        p = rng.choice(self.pending)
        if p["sent"] and rng.random() < 0.6:
            return
        items = [self.settlement(p)]
        if rng.random() < 0.2 and len(self.pending) > 1:
            items.append(self.settlement(rng.choice(self.pending)))
        for item in items:
            if self.cluster:  # one script per principal
                for part in self.parts([item]):
                    self.model.settle_parts({}, [part])
            else:
                self.model.settle_parts({}, self.parts([item]))
        self.store.settle(items)
        self.log.append(f"settle {[(s.reservation, s.tokens, s.cost, s.held, s.sent) for s in items]}")

    def let_through(self) -> None:
        """A call let through while the store failed (held=False), sent once or twice; or a cancel of a
        reservation whose reply was lost."""
        rng = self.rng
        if self.pending and rng.random() < 0.5:
            p = rng.choice(self.pending)
            p["sent"] += 1
            cancel = rng.random() < 0.5
            item = Settlement(p["charges"], p["rid"], 0 if cancel else 40, 0 if cancel else 10, held=False,
                              sent=not cancel)
        else:
            self.count += 1
            item = Settlement(tuple(self.charges()), f"lt{self.count}", rng.choice([0, 30, 200]),
                              rng.choice([0, 100]), held=False)
        for _ in range(rng.choice([1, 1, 2])):
            for part in self.parts([item]) if self.cluster else [None]:
                self.model.settle_parts({}, [part] if part else self.parts([item]))
            self.store.settle([item])
            self.log.append(f"let through {item}")

    def compare(self) -> None:
        for (scope_name, name), charges in self.plans.items():
            scope = USER if scope_name == "user" else DEPARTMENT
            windows = {c.window for c in charges} | {scope.window}
            if self.rng.random() < 0.5:
                windows = {self.rng.choice(sorted(windows))}
            for window in sorted(windows):
                key = self.store.keys(scope, name)[0]
                want = self.model.read(key, prefix_of(scope, window), self.kind(window))
                got = self.store.read(scope, name, window)
                assert got == want, self.fail(f"read {scope.name} {name} {window}: store {got}, model {want}")

    def expiry(self, raw: object) -> None:
        """Every principal's hash lives at least as long as the longest of its windows needs (the run lasts seconds
        of real time: no window's expiry can have run down)."""
        for (scope_name, name) in self.plans:
            scope = USER if scope_name == "user" else DEPARTMENT
            usage = self.store.keys(scope, name)[0]
            state = packed_windows(raw.hget(usage, "S"))  # type: ignore[attr-defined]
            if not state:
                continue
            kinds = {w.kind for (key, _), w in self.model.windows.items() if key == usage}
            need = max(KEEP[k] for k in kinds)
            ttl = raw.ttl(usage)  # type: ignore[attr-defined]
            assert ttl >= need - 60, self.fail(f"{name}: the hash expires in {ttl} s, its windows need {need}")

    def fail(self, what: str) -> str:
        return f"seed {self.seed}, step {len(self.log)}: {what}\n" + "\n".join(self.log[-25:])


def run(url: str, seed: int, steps: int, cluster: bool = False) -> None:
    import redis

    redis.Redis.from_url(url).flushall()
    r = Run(url, seed, cluster)
    r.model.now = r.clock.t
    raw = redis.Redis.from_url(url)
    for _ in range(steps):
        r.step()
        r.expiry(raw)


@pytest.mark.parametrize("seed", range(8))
def test_the_store_holds_what_the_model_says_after_every_step(redis_url, seed):
    run(redis_url, seed, 150)


def test_on_redis_cluster_one_script_per_principal_holds_what_the_model_says():
    with RedisServer(cluster=True) as server:
        for seed in (100, 101):
            run(server.url, seed, 150, cluster=True)
