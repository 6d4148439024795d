"""The reference model of budget mode's store (tests/e2e/test_budget_model.py): per principal and window its buckets
and calls in flight, as docs/enforcement.md and lua_state say they roll, reclaim and move."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

from otel_tokens.quota.budget.store import DOWNGRADE, REFUSED, RESERVED, Charge, Settlement

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
