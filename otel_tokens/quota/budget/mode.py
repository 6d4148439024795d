"""Budget mode on the recorder's lifecycle: `reserve` in begin (one round trip), `settle` in
finish (queued; a background thread pipelines the settlements and reloads the quota file).

Without `rules` in the guard config a call is refused when its worst case would take its user or
its department past 100 %. With rules, each scope does what its rules say: `reject` at the rule's
level (warning: the quota file's warning ratio), `downgrade` at its level to the cheaper model,
reserved at that model's price; a scope with no rule is counted, never refused. A refusal is
judged on the model asked for, before any downgrade.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_tokens import names
from otel_tokens.config.settings import GuardSettings
from otel_tokens.logs import internal_error, log_once, logger
from otel_tokens.pricing import PriceBook
from otel_tokens.quota import vocabulary
from otel_tokens.quota.budget.fit import fitted_output, worth_counting
from otel_tokens.quota.budget.limits_source import LimitsSource
from otel_tokens.quota.budget.parts import account_charges
from otel_tokens.quota.budget.plans import Plan, plans, windows
from otel_tokens.quota.budget.refusal import refusal
from otel_tokens.quota.budget.store import (
    DOWNGRADE,
    LEASE,
    MAX_AMOUNT,
    NANO,
    REFUSED,
    RESERVED,
    Charge,
    RedisBudgetStore,
    Settlement,
    StoreUnavailableError,
    redact,
)
from otel_tokens.quota.calendar import CONCURRENT, RATE_WINDOWS
from otel_tokens.quota.decision import Decision
from otel_tokens.quota.file import Quotas
from otel_tokens.recording.call import UsageEstimate

UNATTRIBUTED = names.UNATTRIBUTED  # docs/design.md: the principal of a call with no user (or no department)
IDLE_FLUSH = 0.05  # seconds a settlement waits for a reservation to carry it before the worker sends it
CARRY = 16  # settlements one reservation carries at most
MAX_PENDING = 100_000  # settlements kept while the store is down; beyond, the oldest are dropped (logged)


@dataclass(frozen=True, slots=True)
class Held:
    """What a reserved call holds in the store, per principal, until it is settled."""

    reservation: str  # the call's id, also what marks its settlement as applied
    charges: tuple[Charge, ...]  # every window of every principal
    tokens: int = 0  # the worst case reserved, what an unfinished stream is settled at (at least)
    cost: int = 0  # nano-units
    held: bool = True  # False: let through while the store failed (counted once it answers, nothing released)


class BudgetMode:
    def __init__(self, settings: GuardSettings, prices: PriceBook, store: RedisBudgetStore | None = None) -> None:
        self.settings = settings
        self.limits = settings.budget  # the store and its timing
        self.prices = prices
        self.store = store or RedisBudgetStore(settings.budget.store, settings.budget.store_timeout)
        self.source = redact(settings.budget.store)
        self.quotas: Quotas | None = None
        self._plans: dict[str, Plan] = {}
        self._windows: dict[str, tuple[str, ...]] = windows(None)
        assert settings.budget.quota_file is not None
        # a changed file is read once it stands still
        self.source = LimitsSource(settings.budget.quota_file, max(self.limits.quota_reload_interval, 0.25),
                                   self._audit_event,
                                   without="refuses every call" if settings.fail_closed else "lets calls through")
        self.audit: Any = None  # the process's AuditTrail (quota/audit_trail.py), set by Enforcement
        self._next_reload = 0.0
        self.healthy = True
        self._pending: deque[Settlement] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reloading = threading.Lock()
        self._flushing = threading.Lock()
        self._unsettled = 0  # settlements queued or being sent
        self._count_lock = threading.Lock()
        self._leases: dict[str, list[tuple[vocabulary.QuotaScope, str, str]]] = {}  # calls holding a slot in flight
        # (principals, downgradable model) -> the windows a call of theirs is charged in, and whether any has a cost
        # limit: built once per quota file, so a call does no per-window work
        self._accounts: dict[tuple[tuple[str, ...], str | None], tuple[tuple[Charge, ...], bool, Quotas]] = {}
        self._next_renewal = 0.0
        self._new_ids()

    # --- life --------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.reload()
            if self.quotas is not None and not self.store.ping():
                self._unavailable("cannot reach it")
        except Exception:  # never into the app's instrument()
            internal_error("budget start")
        self._start_worker()
        atexit.register(self.close)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _start_worker(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="otel-tokens-budget", daemon=True)
        self._thread.start()

    def _new_ids(self) -> None:
        """Reservation ids: random per process (a forked worker draws its own), then a counter (no system call
        per call)."""
        self._id_prefix, self._ids = os.urandom(8).hex(), itertools.count()

    def _after_fork(self) -> None:
        """A pre-forking server's worker: no thread survived the fork, and a lock held by one would
        stay held forever; what the parent had queued is the parent's to send."""
        self._new_ids()
        self._pending.clear()
        self._leases = {}
        self._unsettled = 0
        self._wake, self._stop = threading.Event(), threading.Event()
        self._reloading, self._flushing, self._count_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._start_worker()

    def close(self, timeout: float = 2.0) -> None:
        """Settles what is queued (bounded by `timeout`), then stops the thread."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # no wake-up per settlement: the next reservation carries it in its own round trip; this
            # thread sends only what waited IDLE_FLUSH (so it rarely competes with callers for the GIL)
            self._wake.wait(min(IDLE_FLUSH, self.limits.quota_reload_interval))
            self._wake.clear()
            try:
                self.store.maintain()
                self.flush()
                if self._leases and time.monotonic() >= self._next_renewal:
                    self._renew()
                if time.monotonic() >= self._next_reload or self.source.due(time.time()):
                    self.reload()
            except Exception:
                internal_error("budget worker")

    # --- the quota file, reloaded off the call path ------------------------------------------------------
    def reload(self) -> None:
        """The quota file and the grants file when they changed, the grants in force when one starts or ends."""
        with self._reloading:
            self._next_reload = time.monotonic() + self.limits.quota_reload_interval
            if not self.source.refresh():
                return
            quotas = self.source.quotas
            assert quotas is not None
            self._plans = plans(self.settings, quotas)
            self._windows = windows(quotas)
            self.store.set_zone(quotas.timezone)
            self.quotas = quotas
            if self.audit is not None and self.audit.path is None:
                self.audit.path = quotas.grants.audit_log

    def _audit_event(self, event: str, fields: dict) -> None:
        if self.audit is not None:
            self.audit.event(event, fields)

    @property
    def charged_windows(self) -> dict[str, tuple[str, ...]]:
        """Scope name -> the windows each call is charged in (plans.windows of the quota file in force)."""
        return self._windows

    # --- the call path -----------------------------------------------------------------------------------
    def reserve(self, provider: str, model: str, attribution: Mapping[str, str], estimate: UsageEstimate | None,
                downgradable: bool = True) -> tuple[Decision | None, Held | None]:
        """(None, held) for an allowed call; (a decision, held or None) otherwise."""
        quotas = self.quotas
        if quotas is None:
            return self._fail(), None  # nothing to count against: the usage is not kept either
        started = time.monotonic()
        input_bound, output, choices = 0, None, 1
        if estimate is not None:  # clamped: a negative max_new_tokens must not become a credit
            input_bound, output, choices = max(0, estimate.input_tokens), estimate.max_output_tokens, estimate.choices
        output = self.limits.default_max_output_tokens if output is None else max(0, output)
        output_bound = min(output * max(0, choices), MAX_AMOUNT)
        input_bound = min(input_bound, MAX_AMOUNT)
        principals = tuple(attribution.get(scope.attribute) or UNATTRIBUTED for scope in vocabulary.SCOPES)
        reservation = f"{self._id_prefix}{next(self._ids):x}"
        bound = input_bound + output_bound
        charges, limited = self._account(quotas, principals, model if downgradable else None)
        try:
            amount = (bound, self._cost(provider, model, input_bound, output_bound, limited))
            carried = self._carry()
            unsettled = self._unsettled > len(carried)  # read before: a settlement may land while we ask
            verdict = self._send(reservation, charges, carried, amount)
            if verdict.status != RESERVED and unsettled and self._in_time(started):
                # this process's own finished calls may still hold their worst case: ask again once
                # the worker's batch in flight has landed, carrying what is still queued
                if self._flushing.acquire(timeout=self._time_left(started)):
                    self._flushing.release()
                    verdict = self._send(reservation, charges, self._carry(), amount)
            # each pass answers the last verdict: a downgrade (not reserved: sent again at the cheaper model, once),
            # a refusal of a budget window (the prompt counted exactly, once; then fitted lower), else done
            target, crossing, served, fitted, counted = None, verdict.charge, (provider, model), None, False
            exact = estimate.exact_input if estimate is not None and self.limits.exact_input else None
            while verdict.status != RESERVED:
                charge = verdict.charge
                if verdict.status == DOWNGRADE and target is None:
                    found = self._plans[charge.scope.name].downgrade_for(model)
                    assert found is not None
                    target, crossing = found[1], charge
                    served = ((target.endpoint.provider if target.endpoint else None) or provider, target.model)
                    if not self._in_time(started):
                        raise StoreUnavailableError(f"{self.source} too slow for a second round trip")
                    charges, limited = self._account(quotas, principals, None)
                elif verdict.status != REFUSED or charge.window in RATE_WINDOWS or not self._in_time(started):
                    break
                elif exact is not None and not counted and worth_counting(verdict, input_bound):
                    counted, counting = True, time.monotonic()
                    tokens = exact(served[1])  # near the limit: the prompt counted as the server will count it
                    started += time.monotonic() - counting  # the store's time budget is the store's, not ours
                    if tokens is None or tokens >= input_bound:
                        continue
                    input_bound = tokens
                elif self._plans[charge.scope.name].fit:  # each pass lowers the output limit, or stops
                    per_choice = fitted_output(verdict, input_bound, output_bound, choices,
                                               lambda i, o, m=served: self._cost(*m, i, o, True))
                    if (per_choice is None or per_choice < self.limits.fit_min_tokens
                            or per_choice * max(1, choices) >= output_bound):
                        break
                    output_bound, fitted, crossing = per_choice * max(1, choices), per_choice, charge
                else:
                    break
                amount = (input_bound + output_bound, self._cost(*served, input_bound, output_bound, limited))
                verdict = self._send(reservation, charges, [], amount)
        except StoreUnavailableError as error:
            self._unavailable(str(error))
            # nothing held (or a reservation whose reply was lost: its settlement finds it by id);
            # the call's true usage is counted once the store is back
            return self._fail(), Held(reservation, charges, held=False)
        if not self.healthy:
            self.healthy = True
            logger.warning("otel-tokens: the budget store %s answers again; budget mode enforces again", self.source)
        if verdict.status == REFUSED:
            return refusal(quotas, self._plans[verdict.charge.scope.name], self.prices.currency, verdict), None
        held = Held(reservation, charges, *amount)
        slots = [(c.scope, c.principal, reservation) for c in charges if c.window == CONCURRENT]
        if slots:
            self._leases[reservation] = slots  # renewed by the worker while the call runs
        moved = (target.model, target.endpoint) if target is not None else (None, None)
        if fitted is not None and crossing is not None:
            return Decision(vocabulary.FIT, crossing.scope.name, crossing.principal,
                            {"window": crossing.window or crossing.scope.window, "max_output_tokens": fitted},
                            *moved), held
        if target is None or crossing is None:
            return None, held
        return Decision(vocabulary.DOWNGRADE, crossing.scope.name, crossing.principal,
                        {"window": crossing.window or crossing.scope.window}, *moved), held

    def _send(self, reservation: str, charges: tuple[Charge, ...], carried: list[Settlement],
              amount: tuple[int, int]) -> Any:
        """One round trip; the carried settlements go back to the queue when it fails (sent twice,
        a settlement counts once)."""
        try:
            verdict = self.store.reserve(reservation, self.limits.reservation_ttl, charges, carried, amount)
        except StoreUnavailableError:
            self._pending.extendleft(reversed(carried))
            raise
        self._settled(len(carried))
        return verdict

    def _time_left(self, started: float) -> float:
        return max(0.0, self.limits.store_timeout / 2 - (time.monotonic() - started))

    def _in_time(self, started: float) -> bool:
        """A second round trip only while the first took under half the timeout: a call waits at
        most 1.5 x store_timeout for the store, whatever path it takes."""
        return self._time_left(started) > 0

    def settle(self, held: Held, tokens: int, cost: float | None, at_least_reserved: bool = False,
               sent: bool = True) -> None:
        """Queued: the worker releases the reservation and counts the true usage. A stream left before its
        end without a usage block (`at_least_reserved`) counts its whole reservation: the server may have
        generated all of it. The store is the conservative book for enforcement, the metrics the observed one.
        `sent` False: the call never left (an internal failure after the reservation): no request counted."""
        cost_nano = round(cost * NANO) if cost else 0  # nothing held and no usage: sent as a cancel
        if at_least_reserved:
            tokens, cost_nano = max(tokens, held.tokens), max(cost_nano, held.cost)
        with self._count_lock:
            self._unsettled += 1
        tokens, cost_nano = min(max(0, tokens), MAX_AMOUNT), min(max(0, cost_nano), MAX_AMOUNT)
        if self._leases:
            self._leases.pop(held.reservation, None)
        # the minute counts the call's tokens and one request; its slot among the calls in flight is given back
        self._pending.append(Settlement(held.charges, held.reservation, tokens, cost_nano, held.held, sent))

    def _renew(self) -> None:
        """Keeps the slots of this process's calls in flight held (a process killed mid-call holds its slots
        for at most LEASE seconds): every LEASE / 3 s, in one pipelined round trip."""
        self._next_renewal = time.monotonic() + LEASE / 3
        leases = [slot for slots in list(self._leases.values()) for slot in slots]
        try:
            self.store.renew(leases)
        except StoreUnavailableError as error:
            self._unavailable(str(error))

    # --- inside ----------------------------------------------------------------------------------------------
    def _cost(self, provider: str, model: str, input_tokens: int, output_tokens: int, limited: bool) -> int:
        """The worst case's cost in nano-units (PriceBook.cost_of: under a cost limit an unpriced model is
        reserved at the dearest price known; its reply may name a priced model, which the settlement prices)."""
        cost = self.prices.cost_of(provider, model, input_tokens, output_tokens, worst_case=limited)
        return min(math.ceil(cost.total * NANO), MAX_AMOUNT) if cost is not None else 0

    def _account(self, quotas: Quotas, principals: tuple[str, ...],
                 downgradable_model: str | None) -> tuple[tuple[Charge, ...], bool]:
        """The charges of a call of these principals (one per scope, `vocabulary.SCOPES` order) in every window: the
        scope's own always (counted even without a limit, so a limit set later sees the usage before it), every
        other window the quota file sets in that scope; and whether any window limits cost. Built once per quota
        file, principals and model."""
        key = (principals, downgradable_model)
        found = self._accounts.get(key)
        if found is not None and found[2] is quotas:  # not one built during a reload from the file before
            return found[0], found[1]
        charges, limited = account_charges(quotas, self._windows, self._plans, principals, downgradable_model)
        if len(self._accounts) > 50_000:  # bounded: ids come from outside
            self._accounts = {}
        self._accounts[key] = (charges, limited, quotas)
        return charges, limited

    def _fail(self) -> Decision:
        action = vocabulary.FAIL_CLOSED if self.settings.fail_closed else vocabulary.FAIL_OPEN
        return Decision(action, entry={"source": self.source})

    def _unavailable(self, why: str) -> None:
        if self.healthy:
            self.healthy = False
            log_once(f"budget-down:{self.source}:{self.store.timeout}", "otel-tokens: the budget store %s is "
                     "unavailable (%s); budget mode %s until it answers", self.source, why,
                     "refuses every call" if self.settings.fail_closed else "lets calls through (fail open)")
            logger.debug("%s", why)

    def _carry(self, most: int = CARRY) -> list[Settlement]:
        """Up to `most` queued settlements, taken for one round trip (a reservation carries CARRY; on
        Redis Cluster none: they would cost the caller one round trip per principal)."""
        carried: list[Settlement] = []
        if most == CARRY and self.store.cluster:
            return carried
        pending = self._pending
        try:
            while pending and len(carried) < most:
                carried.append(pending.popleft())
        except IndexError:  # another thread took the last one
            pass
        return carried

    def _settled(self, count: int) -> None:
        if count:
            with self._count_lock:
                self._unsettled -= count

    def flush(self) -> None:
        """Sends the queued settlements; returns once those queued before the call are in the store
        (or the store failed), whichever thread was sending them."""
        with self._flushing:
            pending = self._pending
            while pending:
                batch = self._carry(500)
                if not batch:
                    return
                try:
                    self.store.settle(batch)
                except StoreUnavailableError as error:
                    self._unavailable(str(error))
                    pending.extendleft(reversed(batch))
                    while len(pending) > MAX_PENDING:
                        pending.pop()
                        self._settled(1)
                        log_once("budget-pending-dropped", "otel-tokens: more than %d settlements wait for the "
                                 "budget store %s; dropping the newest (their reservations expire)", MAX_PENDING,
                                 self.source)
                    return
                self._settled(len(batch))
