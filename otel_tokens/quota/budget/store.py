"""The budget store: Redis (or Valkey, or Redis Cluster) through redis-py, the only module that talks to it.

One round trip per reservation: an EVALSHA of `lua.RESERVE` over every principal's hash (all its windows in one).
On Redis Cluster the principals live in different slots: reserved one after the other, what was held given back if
a later one refuses (between the two, another call may see it held: it can only be refused earlier, never let
through). Keys are the SHA-256 of the principal inside a hash tag of ours, so no id, whatever braces or colons it
holds, can reach another principal's keys or slot.

Every command has a socket timeout (default 50 ms) and no retries; after a failure the store is
not asked again for `backoff` seconds (calls get the fail-open / fail-closed answer at once), then
the next call tries again, so a store that is down, slow, restarted or full never holds a call
beyond one timeout and the guard recovers by itself.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from otel_tokens.quota.budget import lua
from otel_tokens.quota.budget.records import (  # noqa: F401 - the store's vocabulary, imported from here too
    DOWNGRADE,
    PREFIX,
    REFUSED,
    RESERVED,
    Charge,
    Settlement,
    Verdict,
    principal_keys,
    redact,
    window_prefix,
)
from otel_tokens.quota.calendar import CONCURRENT, MINUTE, ROLLING, ZoneOffsets
from otel_tokens.quota.vocabulary import KINDS, QuotaScope

NANO = 1_000_000_000  # cost is held in integer nano-units of the currency
MAX_AMOUNT = 2**50  # Lua numbers are doubles: amounts stay well inside their exact integers
_SCRIPTS = {"reserve": lua.RESERVE, "settle": lua.SETTLE, "peek": lua.PEEK, "renew": lua.RENEW}
LEASE = 15.0  # seconds a call's slot among the calls in flight is held unless its process renews it
# The key layout this version writes (docs/enforcement.md, "Redis layout"): 1, the scopes' own windows (rolling
# 24 h buckets, UTC month); 2, every window, each in a key of its own, a calendar bucket keyed by its id in the zone;
# 3, every window of a principal in its one hash (one HMGET and one HSET per principal and call), layout 2's keys
# taken over on first use. A version only adds keys and fields (old processes keep reading theirs during a rolling
# deploy); one that must change their meaning raises it, and older versions then refuse the store instead of
# misreading it.
LAYOUT = 3
LAYOUT_KEY = f"{PREFIX}layout"


class StoreUnavailableError(Exception):
    """The store could not answer in time (down, slow, full, restarting)."""


class StoreLayoutError(StoreUnavailableError):
    """The store holds keys of a newer layout than this version reads: upgrade every process."""


class RedisBudgetStore:
    def __init__(self, url: str, timeout: float = 0.05, backoff: float = 1.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.url, self.timeout, self.backoff = url, timeout, backoff
        self.clock = clock  # None: Redis's own clock
        self._zone: ZoneOffsets | None = None  # None: UTC
        self.cluster = False
        self._client: Any = None
        self._sha = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SCRIPTS.items()}
        self._stale = True  # the scripts must be (re)loaded into the store before they can run
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._encodings: dict[int, tuple[Sequence[Charge], int | None, list[tuple[int, int, str, str, str]]]] = {}

    # --- connection --------------------------------------------------------------------------------
    def _connect(self) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # no CLIENT SETINFO on connect: two more round trips per new connection, each with its own timeout
        quiet = ({"driver_info": None} if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
                 else {"lib_name": None, "lib_version": None})
        options: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                                   "retry": Retry(NoBackoff(), 0), "health_check_interval": 0, **quiet}
        client = redis.Redis.from_url(self.url, **options)
        info = client.info("cluster")
        if info.get("cluster_enabled"):
            from redis.cluster import RedisCluster

            client.close()
            client = RedisCluster.from_url(self.url, socket_timeout=self.timeout, **quiet,
                                           socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0))
            self.cluster = True
        self._check_layout(client)
        self._load_scripts(client)
        return client

    def _check_layout(self, client: Any) -> None:
        """Records LAYOUT in the store (the highest a version has written), or refuses a store a newer version
        has written: once per connection, not per call."""
        client.set(LAYOUT_KEY, LAYOUT, nx=True)
        found = client.get(LAYOUT_KEY)
        try:
            written = int(found)
        except (TypeError, ValueError):
            written = 0
        if written > LAYOUT:
            raise StoreLayoutError(f"{redact(self.url)} holds otel-tokens budget keys of layout {written} (key "
                                   f"{LAYOUT_KEY}), written by a newer version; this version reads layout {LAYOUT}: "
                                   "upgrade every process that uses this store")
        if written < LAYOUT:
            client.set(LAYOUT_KEY, LAYOUT)

    def _load_scripts(self, client: Any) -> None:
        for source in _SCRIPTS.values():
            client.script_load(source)
        self._stale = False

    def maintain(self) -> None:
        """Off the call path (the worker): after a failure, reload the scripts (a restarted Redis has
        none) and, when that works, end the backoff at once instead of waiting it out."""
        if not (self._stale or self._down_until) or self._client is None:
            return
        try:
            self._load_scripts(self._client)
            self._down_until = 0.0
        except Exception:
            pass

    def _eval(self, client: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA, never EVAL: a store without the script answers NOSCRIPT, which fails this call
        (bounded by one timeout) and leaves the reload to `maintain`."""
        return client.evalsha(self._sha[name], len(keys), *keys, *args)

    def _run(self, action: Callable[[Any], Any], back_off: bool = True) -> Any:
        """Runs `action(client)`; StoreUnavailableError on any failure, and at once while backing off. A failure
        starts the backoff of every call unless `back_off` is False (a read off the call path)."""
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailableError(f"{redact(self.url)} failed less than {self.backoff:g} s ago")
        try:
            client = self._client
            if client is None:
                with self._lock:
                    if self._down_until and time.monotonic() < self._down_until:  # another thread just failed
                        raise StoreUnavailableError(f"{redact(self.url)} failed less than {self.backoff:g} s ago")
                    if self._client is None:
                        self._client = self._connect()
                    client = self._client
            result = action(client)
        except StoreLayoutError:  # asked again after the backoff (the other processes may be upgraded by then)
            self._down_until = time.monotonic() + self.backoff
            raise
        except StoreUnavailableError:
            raise
        except Exception as error:
            if "NOSCRIPT" in str(error):
                self._stale = True
            if back_off:
                self._down_until = time.monotonic() + self.backoff
            raise StoreUnavailableError(f"{redact(self.url)}: {type(error).__name__}: {error}") from error
        self._down_until = 0.0
        return result

    def ping(self) -> bool:
        try:
            return bool(self._run(lambda client: client.ping()))
        except StoreUnavailableError:
            return False

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    # --- keys and arguments --------------------------------------------------------------------------
    def keys(self, scope: QuotaScope, principal: str) -> tuple[str, str]:
        cached = (scope.name, principal)
        found = self._keys.get(cached)
        if found is None:
            if len(self._keys) > 100_000:  # bounded: ids come from outside
                self._keys.clear()
            found = self._keys[cached] = principal_keys(scope, principal)
        return found

    def _now(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    def set_zone(self, name: str) -> None:
        """The organization's time zone: calendar windows begin at its local midnight (from the next call on; a
        window already counted in another zone goes on until the new zone's next window begins)."""
        if name != (self._zone.name if self._zone else "UTC"):
            self._zone = None if name == "UTC" else ZoneOffsets(name)

    def _shift(self) -> int | None:
        """The zone's UTC offset now, in seconds (None: UTC, as versions before zones sent it)."""
        zone = self._zone
        return None if zone is None else zone.at(self.clock() if self.clock is not None else time.time())

    @staticmethod
    def _kind(scope: QuotaScope, window: str, shift: int | None) -> str:
        """The scripts' window kind: `r` (rolling 24 h), `n` (the minute), `k<lease>` (the calls in flight), or the
        calendar window's letter and the zone's UTC offset (`d28800`); the UTC month is `m` alone."""
        window = window or scope.window
        if window == ROLLING:
            return "r"
        if window == MINUTE:
            return "n"
        if window == CONCURRENT:
            return f"k{LEASE:g}"
        if shift is None:
            return "m" if window == "month" else f"{window[0]}0"
        return f"{window[0]}{shift}"

    def _encoded(self, charges: Sequence[Charge]) -> list[tuple[int, int, str, str, str]]:
        """Per principal of `charges` (its windows consecutive): (first index, end index, usage key, marks key, its
        part as JSON without the closing bracket). Cached for the same tuple (immutable): budget mode keeps one per
        set of principals while a quota file is in force, so a call does no per-window work here."""
        shift = self._shift()
        cached = type(charges) is tuple
        found = self._encodings.get(id(charges)) if cached else None
        if found is not None and found[0] is charges and found[1] == shift:
            return found[2]
        groups = []
        start = 0
        for end in range(1, len(charges) + 1):
            first = charges[start]
            if end < len(charges) and (charges[end].scope, charges[end].principal) == (first.scope, first.principal):
                continue
            usage, marks = self.keys(first.scope, first.principal)
            windows = [[window_prefix(c.scope, c.window), self._kind(c.scope, c.window, shift), c.token_limit,
                        c.cost_limit, c.refuse, c.downgrade] for c in charges[start:end]]
            groups.append((start, end, usage, marks, json.dumps([_shown(first.principal), windows])[:-1]))
            start = end
        if cached:
            if len(self._encodings) > 10_000:  # bounded: ids come from outside
                self._encodings.clear()
            self._encodings[id(charges)] = (charges, shift, groups)
        return groups

    # --- the operations ------------------------------------------------------------------------------
    def reserve(self, reservation: str, ttl: float, charges: Sequence[Charge], settlements: Sequence[Settlement] = (),
                amount: tuple[int, int] | None = None) -> Verdict:
        """One round trip: the `settlements` carried (applied first), then the reservation of `amount` (tokens, cost
        nano-units; default: the first charge's) in every window of `charges`."""
        if self._client is None:
            self._run(lambda client: None)  # connects, and learns whether this is a cluster
        tokens, cost = amount if amount is not None else (charges[0].tokens, charges[0].cost)
        groups = self._encoded(charges)
        if self.cluster:
            if settlements:
                self.settle(settlements)
            return self._reserve_one_by_one(reservation, ttl, charges, groups, tokens, cost)
        return self._run(lambda client: self._reserve(client, reservation, ttl, charges, groups, tokens, cost,
                                                      settlements))

    def _reserve(self, client: Any, reservation: str, ttl: float, charges: Sequence[Charge],
                 groups: Sequence[tuple[int, int, str, str, str]], tokens: int, cost: int,
                 settlements: Sequence[Settlement] = ()) -> Verdict:
        keys: list[str] = []
        for _, _, usage, marks, _ in groups:
            keys.append(usage)
            keys.append(marks)
        args = [self._now(), reservation, ttl, _amount(tokens), _amount(cost),
                "[" + ",".join(part + "]" for *_, part in groups) + "]", self._parts(settlements, keys)]
        reply = self._eval(client, "reserve", keys, args)
        if reply[0] == RESERVED:
            return Verdict(RESERVED)
        base = groups[0][0]
        status, index, quota, used, amount, limit = (int(v) for v in reply[:6])
        retry = float(reply[6]) if len(reply) > 6 else -1.0
        calendar = tuple(charges[base + int(i) - 1] for i in reply[7]) if len(reply) > 7 else ()
        return Verdict(status, charge=charges[base + index - 1], quota=KINDS[quota - 1], used=used, amount=amount,
                       limit=limit, retry_after=retry if retry >= 0 else None, never=retry == -2, calendar=calendar)

    def _reserve_one_by_one(self, reservation: str, ttl: float, charges: Sequence[Charge],
                            groups: Sequence[tuple[int, int, str, str, str]], tokens: int, cost: int) -> Verdict:
        """Redis Cluster: one script per principal (all its windows live in its slot), in order. A refusal
        anywhere wins over a downgrade anywhere, as in one script: a principal asking for a downgrade holds
        nothing, the principals after it are still judged, and whatever was reserved is given back."""
        held: list[Sequence[Charge]] = []
        downgrade: Verdict | None = None
        for group in groups:
            verdict = self._run(lambda client, g=group: self._reserve(client, reservation, ttl, charges, [g],
                                                                      tokens, cost))
            if verdict.status == RESERVED:
                held.append(charges[group[0]:group[1]])
                continue
            if verdict.status == DOWNGRADE:
                downgrade = downgrade or verdict
                continue
            self._release(reservation, held)
            return verdict
        if downgrade is not None:
            self._release(reservation, held)
            return downgrade
        return Verdict(RESERVED)

    def _release(self, reservation: str, held: Sequence[Sequence[Charge]]) -> None:
        """Gives back what the principals before a refusal held; if the store fails now, the refusal stands (a
        refused call let through would be worse) and those reservations expire after their ttl."""
        if held:
            try:
                self.settle([Settlement(group, reservation, 0, 0, sent=False) for group in held])
            except StoreUnavailableError:
                pass

    def settle(self, items: Sequence[Settlement]) -> None:
        """Settles many calls in one pipelined round trip (one script per principal on a cluster)."""
        if self._client is None:
            self._run(lambda client: None)

        def run(client: Any) -> None:
            if self.cluster:
                for item in items:
                    for group in self._encoded(item.charges):
                        keys: list[str] = []
                        self._eval(client, "settle", keys, [self._now(), self._parts([item], keys, [group])])
                return
            pipe = client.pipeline(transaction=False)
            for item in items:
                keys = []
                self._eval(pipe, "settle", keys, [self._now(), self._parts([item], keys)])
            pipe.execute()  # a failure re-queues the batch: settlements sent twice count once

        self._run(run)

    def _parts(self, items: Sequence[Settlement], keys: list[str],
               only: Sequence[tuple[int, int, str, str, str]] | None = None) -> str:
        """The settlements as the scripts' JSON argument; their keys appended to `keys`."""
        parts = []
        for item in items:
            tail = (f',"{"1" if item.held else ""}",{json.dumps(item.reservation)},{_amount(item.tokens)},'
                    f'{_amount(item.cost)},{1 if item.sent else 0}]')
            for _, _, usage, marks, part in only or self._encoded(item.charges):
                keys.append(usage)
                keys.append(marks)
                parts.append(part + tail)
        return "[" + ",".join(parts) + "]"

    def renew(self, leases: Sequence[tuple[QuotaScope, str, str]], lease: float = LEASE) -> int:
        """Moves the deadline of each (scope, principal, reservation)'s slot among the calls in flight to now +
        `lease`: one script per principal, pipelined (off the call path: no backoff on failure)."""
        if not leases:
            return 0

        def run(client: Any) -> int:
            pipe = client if self.cluster else client.pipeline(transaction=False)
            replies = [self._eval(pipe, "renew", [self.keys(scope, principal)[0]],
                                  [self._now(), lease, f"{CONCURRENT}.r:{reservation}"])
                       for scope, principal, reservation in leases]
            return sum(int(r) for r in (replies if self.cluster else pipe.execute()))

        return int(self._run(run, back_off=False))

    def read(self, scope: QuotaScope, principal: str, window: str = "") -> tuple[int, int, int]:
        """(tokens, cost nano-units, reservations in flight) of one principal's current window (default: the
        scope's own), after reclaiming expired reservations."""
        reply = self._run(lambda client: self._eval(client, "peek", *self._peek_args(scope, principal, window,
                                                                                      "read")))
        return int(reply[0]), int(reply[1]), int(reply[2])

    def peek_many(self, accounts: Sequence[tuple[QuotaScope, str, str]]) -> list[tuple[int, int]]:
        """(tokens, cost nano-units) of each (scope, principal, window), pipelined in one round trip (one each on
        a cluster). Off the call path: its failure starts no backoff of the calls (and fails at once during
        theirs); a failed first connection does, as a call's would."""
        if self._client is None:
            self._run(lambda client: None)

        def run(client: Any) -> list[Any]:
            if self.cluster:
                return [self._eval(client, "peek", *self._peek_args(*account)) for account in accounts]
            pipe = client.pipeline(transaction=False)
            for account in accounts:
                self._eval(pipe, "peek", *self._peek_args(*account))
            return list(pipe.execute())

        return [(int(r[0]), int(r[1])) for r in self._run(run, back_off=False)]

    def _peek_args(self, scope: QuotaScope, principal: str, window: str = "",
                   read: str = "") -> tuple[list[str], list[Any]]:
        return list(self.keys(scope, principal)), [self._now(), window_prefix(scope, window),
                                                   self._kind(scope, window, self._shift()), _shown(principal), read]


def _shown(principal: str) -> str:
    """The id kept beside a principal's usage for operators: any string, at most 256 bytes of UTF-8."""
    return principal.encode("utf-8", "backslashreplace")[:256].decode("utf-8", "ignore")


def _amount(value: int) -> int:
    return min(max(0, int(value)), MAX_AMOUNT)

