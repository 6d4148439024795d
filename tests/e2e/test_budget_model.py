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

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from otel_tokens.quota.budget.store import DOWNGRADE, REFUSED, RESERVED, Charge, RedisBudgetStore, Settlement
from otel_tokens.quota.vocabulary import DEPARTMENT, USER, QuotaScope
from tests.support.budget import packed_windows
from tests.support.redis_server import RedisServer

SIZE = {"r": 300, "n": 1}
SPAN = {"r": 288, "n": 60}
GONE = 86400
KEEP = {"r": 87000, "d": 259200, "w": 777600, "m": 2851200, "y": 31795200, "n": 600, "k": 3600}
CALENDAR = "dwmy"
KIND = {"24h": "r", "minute": "n", "concurrent": "k", "day": "d", "week": "w", "month": "m", "year": "y"}
LEASE = 15.0
ZONES = ("UTC", "Asia/Shanghai", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe")
USERS = ("ann", "bob", "{cy}:x")
DEPARTMENTS = ("ops", "sales\u00e9")
USER_WINDOWS = ("24h", "minute", "concurrent", "day", "week", "month", "year")
DEPARTMENT_WINDOWS = ("month", "24h", "minute", "concurrent", "day", "week", "year")


def deadline(t: float) -> float:
    return float(f"{t:.3f}")  # the scripts keep a deadline to the millisecond


@dataclass
class Window:
    kind: str
    b: int
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket -> [tokens, cost]
    held: dict[str, list[float]] = field(default_factory=dict)  # reservation -> [bucket, tokens, cost, deadline]

    @property
    def lo(self) -> int:
        return self.b - SPAN.get(self.kind, 0)

    def add(self, b: int, t: int, c: int) -> None:
        if b < self.lo:
            return
        row = self.buckets.setdefault(b, [0, 0])
        row[0] += t
        row[1] += c

    def totals(self) -> tuple[int, int]:
        rows = [v for b, v in self.buckets.items() if self.lo <= b <= self.b]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)


class Model:
    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], Window] = {}  # (principal key, prefix) -> window
        self.exists: set[str] = set()  # usage hashes in the store
        self.marks: dict[str, dict[str, float]] = {}
        self.now = 0.0

    # --- one script call -------------------------------------------------------------------------------
    def bucket(self, kind: str, shift: int) -> int:
        now = self.now
        if kind in SIZE:
            return math.floor(now / SIZE[kind])
        if kind == "k":
            return 0
        local = datetime.fromtimestamp(math.floor(now + shift), timezone.utc)
        if kind == "m":
            return local.year * 12 + local.month - 1
        if kind == "y":
            return local.year
        day = math.floor((now + shift) / 86400)
        return day if kind == "d" else math.floor((day + 3) / 7)

    def load(self, acct: dict, key: str, wins: list[tuple[str, str]]) -> None:
        loaded = acct.setdefault(key, {"w": {}, "swept": set()})
        turned = False
        for prefix, kind_shift in wins:
            if prefix in loaded["w"]:
                continue
            kind = kind_shift[0]
            b = self.bucket(kind, int(float(kind_shift[1:] or 0)) if kind != "k" else 0)
            w = self.windows.get((key, prefix))
            if w is None:
                w = self.windows[(key, prefix)] = Window(kind, b)
            elif b > w.b:
                w.b = b
                w.buckets = {x: v for x, v in w.buckets.items() if x >= w.lo}
                turned = turned or kind != "n"
            loaded["w"][prefix] = w
        self.exists.add(key)
        if turned:
            self.sweep(loaded, key)

    def mark(self, key: str, name: str) -> None:
        marks = self.marks.setdefault(key, {})
        for m in [m for m, score in marks.items() if score <= self.now]:
            del marks[m]
        marks[name] = self.now + GONE

    def release(self, w: Window, r: list[float]) -> None:
        w.add(int(r[0]), -int(r[1]), -int(r[2]))

    def sweep(self, loaded: dict, key: str) -> None:
        loaded["swept"] = set(loaded["w"])
        for prefix, w in loaded["w"].items():
            for rid, r in list(w.held.items()):
                if r[3] <= self.now:
                    self.release(w, r)
                    del w.held[rid]
                    self.mark(key, f"x:{prefix}{rid}")
                elif r[0] < w.lo and w.kind in CALENDAR:
                    r[0] = w.b
                    w.add(w.b, int(r[1]), int(r[2]))

    def settle_parts(self, acct: dict, parts: list[tuple[str, list[tuple[str, str]], Settlement]]) -> None:
        for key, wins, item in parts:
            self.load(acct, key, wins)
            loaded = acct[key]["w"]
            rid = item.reservation
            for prefix, _ in wins:
                w = loaded[prefix]
                tk, ck = item.tokens, item.cost
                if w.kind == "n":
                    ck = 1 if item.sent else 0
                elif w.kind == "k":
                    tk, ck = 0, 0
                r = w.held.get(rid)
                apply, at = False, None
                if not item.held and tk == 0 and ck == 0:
                    if r is not None:
                        self.release(w, r)
                        del w.held[rid]
                elif not item.held:
                    marks = self.marks.setdefault(key, {})
                    if f"n:{prefix}{rid}" not in marks:
                        self.mark(key, f"n:{prefix}{rid}")
                        if r is not None:
                            self.release(w, r)
                            del w.held[rid]
                        apply = True
                elif r is not None:
                    at = int(r[0])
                    self.release(w, r)
                    del w.held[rid]
                    apply = True
                else:
                    apply = self.marks.setdefault(key, {}).pop(f"x:{prefix}{rid}", None) is not None
                if apply and w.kind == "n" and at is not None:
                    if at >= w.lo:
                        w.add(at, tk, ck)
                elif apply and (tk or ck):
                    w.add(w.b, tk, ck)

    def reserve(self, rid: str, ttl: float, groups: list[tuple[str, list[tuple[str, str]], list[Charge]]],
                tokens: int, cost: int, carried: list) -> tuple:
        acct: dict = {}
        self.settle_parts(acct, carried)
        rows = []
        for key, wins, charges in groups:
            self.load(acct, key, wins)
            for (prefix, kind_shift), charge in zip(wins, charges, strict=True):
                w = acct[key]["w"][prefix]
                amount = (tokens, cost)
                if w.kind == "n":
                    amount = (tokens, 1)
                elif w.kind == "k":
                    amount = (1, 0)
                lease = float(kind_shift[1:]) if w.kind == "k" else None
                rows.append((key, prefix, w, amount, charge, lease))

        def check(i: int, row: tuple) -> tuple | None:
            _, _, w, amount, charge, _ = row
            used = w.totals()
            limits = (charge.token_limit, charge.cost_limit)
            for status, ratio in ((REFUSED, charge.refuse), (DOWNGRADE, charge.downgrade)):
                for q in (0, 1):
                    if ratio is not None and limits[q] is not None and amount[q] > 0 and \
                            used[q] + amount[q] > limits[q] * ratio:
                        return status, i, q, used[q], amount[q], limits[q]
            return None

        verdict = None
        for i, row in enumerate(rows):
            crossing = check(i, row)
            if crossing and row[1] not in acct[row[0]]["swept"]:  # its window not yet reclaimed in this call
                self.sweep(acct[row[0]], row[0])
                crossing = check(i, row)
            if crossing and crossing[0] == REFUSED:
                return (*crossing, *self.retry(rows, i, crossing[2]))
            verdict = verdict or crossing
        if verdict:
            return verdict
        for _key, _prefix, w, amount, _charge, lease in rows:
            w.add(w.b, *amount)
            w.held[rid] = [w.b, amount[0], amount[1], deadline(self.now + (lease if lease is not None else ttl))]
        return (RESERVED,)

    def reserve_cluster(self, rid: str, ttl: float, groups: list, tokens: int, cost: int, carried: list) -> tuple:
        """Redis Cluster: the carried settlements first, one script per principal each; then one reservation
        script per principal, in order; what the principals before a refusal (or a downgrade) hold given back."""
        for part in carried:
            self.settle_parts({}, [part])
        held, downgrade, base = [], None, 0
        for group in groups:
            verdict = self.reserve(rid, ttl, [group], tokens, cost, [])
            if verdict[0] == RESERVED:
                held.append(group)
            elif verdict[0] == DOWNGRADE:
                downgrade = downgrade or (verdict[0], verdict[1] + base, *verdict[2:])
            else:
                self.give_back(rid, held)
                return (verdict[0], verdict[1] + base, *verdict[2:6], verdict[6], verdict[7],
                        tuple(j + base for j in verdict[8]))
            base += len(group[2])
        if downgrade:
            self.give_back(rid, held)
            return downgrade
        return (RESERVED,)

    def give_back(self, rid: str, held: list) -> None:
        for key, wins, charges in held:
            self.settle_parts({}, [(key, wins, Settlement(tuple(charges), rid, 0, 0, sent=False))])

    def retry(self, rows: list[tuple], first: int, q0: int) -> tuple[float | None, bool, tuple[int, ...]]:
        """(Retry-After, never, the calendar windows that refuse too) of a refusal by rows[first]."""
        worst, never, calendar = -1.0, False, []

        def account(i: int, q: int) -> None:
            nonlocal worst, never
            _, _, w, amount, charge, _ = rows[i]
            if w.kind == "k":
                worst = max(worst, 1.0)
                return
            if w.kind not in SIZE:
                calendar.append(i)
                return
            limit = (charge.token_limit, charge.cost_limit)[q]
            need = w.totals()[q] + amount[q] - limit * charge.refuse
            freed = 0
            for x in range(w.lo, w.b + 1):
                freed += w.buckets.get(x, [0, 0])[q]
                if freed >= need:
                    worst = max(worst, (x + SPAN[w.kind] + 1) * SIZE[w.kind] - self.now)
                    return
            never = True

        account(first, q0)
        for i in range(first + 1, len(rows)):
            _, _, w, amount, charge, _ = rows[i]
            used = w.totals()
            for q, limit in enumerate((charge.token_limit, charge.cost_limit)):
                if charge.refuse is not None and limit is not None and amount[q] > 0 and \
                        used[q] + amount[q] > limit * charge.refuse:
                    account(i, q)
        retry = -2.0 if never else float(f"{worst:.3f}")
        return (retry if retry >= 0 else None), retry == -2, tuple(calendar)

    def read(self, key: str, prefix: str, kind_shift: str) -> tuple[int, int, int]:
        if key not in self.exists:
            return 0, 0, 0
        acct: dict = {}
        self.load(acct, key, [(prefix, kind_shift)])
        self.sweep(acct[key], key)
        w = acct[key]["w"][prefix]
        return (*w.totals(), len(w.held))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


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
