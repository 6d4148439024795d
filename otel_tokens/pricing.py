"""Prices: the built-in table, the user's price file and inline entries, and cost in one currency.

Lookup order: inline entries, the price file, the built-in table; first match wins. A price file
that changes on disk is re-read on the next call (checked at most every `price_reload_interval`
seconds, so the call path pays one clock read). A model with no price gets no cost, logged once
and listed by `doctor`.
"""

from __future__ import annotations

import fnmatch
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from otel_tokens.config import read_yaml
from otel_tokens.config.errors import ConfigError, ConfigProblemsError
from otel_tokens.config.settings import Settings
from otel_tokens.config.watched import SettleGate, file_stamp
from otel_tokens.logs import log_once, logger

_ENTRY_KEYS = {"match", "provider", "currency", "input", "output", "cached_input", "date", "source"}
_REQUIRED = ("match", "currency", "input", "output")
PER = 1_000_000  # prices are per million tokens


@dataclass(frozen=True)
class Price:
    match: str
    currency: str
    input: float
    output: float
    cached_input: float | None = None
    provider: str | None = None
    date: str | None = None
    source: str | None = None
    origin: str = ""  # where the entry came from: built-in, the price file, config
    _pattern: re.Pattern[str] | None = None

    def matches(self, provider: str, model: str) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        assert self._pattern is not None
        return self._pattern.match(model.lower()) is not None


class Cost(NamedTuple):
    input: float  # includes cached input at its own price
    output: float
    currency: str

    @property
    def total(self) -> float:
        return self.input + self.output


def _valid_glob(pattern: Any) -> bool:
    if not isinstance(pattern, str) or not pattern or pattern != pattern.strip() or "\n" in pattern:
        return False
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                return False
            depth = 1
        elif char == "]" and depth:
            depth = 0
        elif char == "]":
            return False
    return depth == 0


def parse_entries(raw: Any, source: str, origin: str, errors: list[str], field: str = "models") -> list[Price]:
    """Valid entries of a `models:` list; each bad entry is reported (file, field, value) and skipped."""
    if not isinstance(raw, list):
        error = ConfigError(source, field, raw, "is not a list of price entries")
        errors.append(f"otel-tokens: {error}; no prices read from it")
        logger.warning("%s", errors[-1])
        return []
    prices = []
    for i, entry in enumerate(raw):
        try:
            prices.append(_entry(entry, source, f"{field}[{i}]", origin))
        except ConfigError as error:
            errors.append(f"otel-tokens: {error}; entry skipped")
            logger.warning("%s", errors[-1])
    return prices


def _entry(entry: Any, source: str, where: str, origin: str) -> Price:
    """One price entry, or ConfigError (ConfigProblemsError: every problem of the entry at once)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(source, where, entry, "is not a mapping")
    problems: list[ConfigError] = [
        ConfigError(source, f"{where}.{key}", entry[key], f"is not a known field ({', '.join(sorted(_ENTRY_KEYS))})")
        for key in sorted(map(str, set(entry) - _ENTRY_KEYS))]
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        problems.append(ConfigError(source, f"{where}.{', '.join(missing)}", None,
                                    "is missing" if len(missing) == 1 else "are missing"))

    def check(key: str, ok: Any, reason: str) -> None:
        if key in entry and not ok(entry[key]):
            problems.append(ConfigError(source, f"{where}.{key}", entry[key], reason))

    check("match", _valid_glob, "is not a valid glob (non-empty, no spaces, every [ closed by ])")
    check("currency", lambda c: isinstance(c, str) and len(c) == 3 and c.isalpha(), "is not a 3-letter currency code")
    check("provider", lambda p: p is None or (isinstance(p, str) and bool(p)), "is not a provider name")
    for key in ("input", "output", "cached_input"):
        check(key, lambda v, key=key: (v is None and key == "cached_input") or _price_number(v),
              "is not a non-negative number (price per million tokens)")
    when = entry.get("date")
    if when is not None:
        try:
            when = date.fromisoformat(str(when)).isoformat()
        except ValueError:
            problems.append(ConfigError(source, f"{where}.date", when, "is not an ISO date (YYYY-MM-DD)"))
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigProblemsError(problems)
    cached = entry.get("cached_input")
    match = entry["match"]
    return Price(match=match, currency=entry["currency"].upper(), provider=entry.get("provider"),
                 input=float(entry["input"]), output=float(entry["output"]),
                 cached_input=None if cached is None else float(cached), date=when,
                 source=None if entry.get("source") is None else str(entry["source"]), origin=origin,
                 _pattern=re.compile(fnmatch.translate(match.lower())))


def _price_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def load_price_file(path: Path, origin: str, errors: list[str]) -> list[Price]:
    source = f"price file {path}"
    try:
        data = read_yaml(path, "price file")
    except ConfigError as error:
        errors.append(f"otel-tokens: {error}; no prices read from it")
        logger.warning("%s", errors[-1])
        return []
    if not isinstance(data, Mapping) or "models" not in data:
        error = ConfigError(source, "(top level)", type(data).__name__, "is not a mapping with a `models:` list")
        errors.append(f"otel-tokens: {error}; no prices read from it")
        logger.warning("%s", errors[-1])
        return []
    unknown = set(data) - {"version", "models"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        error = ConfigError(source, key, data[key], "is not a known field (version, models)")
        errors.append(f"otel-tokens: {error}; ignored")
        logger.warning("%s", errors[-1])
    return parse_entries(data["models"], source, origin, errors)


def _warn_on_drops(path: Path, old: list[Price], new: list[Price]) -> None:
    """A reload that loses entries or cuts a price more than tenfold is more often a bad edit than a
    price change: say which models."""
    after: dict[tuple[str | None, str], Price] = {}
    for price in new:
        after.setdefault((price.provider, price.match), price)  # the first entry wins, as in lookups
    dropped = sorted(p.match for p in old if (p.provider, p.match) not in after)

    def tenfold(before: float | None, now: float | None) -> bool:
        return before is not None and now is not None and before > 0 and now * 10 < before

    cut = sorted(p.match for p in old if (q := after.get((p.provider, p.match))) is not None
                 and q.currency == p.currency  # another currency is another scale: not compared
                 and (tenfold(p.input, q.input) or tenfold(p.output, q.output)
                      or tenfold(p.cached_input, q.cached_input)))
    if dropped:
        logger.warning("otel-tokens: price file %s no longer prices %s (their calls fall back to the next "
                       "price source, or get no cost)", path, ", ".join(dropped[:20]))
    if cut:
        logger.warning("otel-tokens: price file %s cut the price of %s more than tenfold; intended?", path,
                       ", ".join(cut[:20]))


def builtin_prices() -> list[Price]:
    path = resources.files("otel_tokens") / "data" / "prices.yaml"
    with resources.as_file(path) as real_path:
        return load_price_file(Path(real_path), "built-in", [])


class PriceBook:
    """Resolves a model's price and turns token counts into cost in the reporting currency."""

    def __init__(self, settings: Settings) -> None:
        self.currency = settings.currency
        self.rates = dict(settings.exchange_rates)
        self.errors: list[str] = []
        self._inline = parse_entries(list(settings.prices), f"config {settings.config_file or '(settings)'}", "config",
                                     self.errors,
                                     field="prices")
        self._builtin = builtin_prices() if settings.builtin_prices else []
        self._file = settings.price_file
        self._file_prices: list[Price] = []
        self._file_stamp: tuple[int, int, int] | None = None
        self._interval = settings.price_reload_interval
        self._edit = SettleGate(max(settings.price_reload_interval, 0.5))
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Price | None] = {}
        self._dearest: tuple[float, float] | None = None
        self.unpriced: set[tuple[str, str]] = set()
        self._reload_file()

    # --- price file ---
    def _stamp(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        return file_stamp(self._file)

    def _reload_file(self) -> None:
        """Read the price file once it is stable: a file written in place (not written then renamed) may
        be read half-written and still parse, so a file that changed within the last check interval, or
        while it was read, is read again at a later check; the first read at start-up is taken at once."""
        if self._file is None:
            return
        stamp = self._stamp()
        if stamp == self._file_stamp and stamp is not None:
            return
        first = self._file_stamp is None and not self._file_prices
        if not first and stamp is not None and not self._edit.ready(stamp):
            return  # wait until the same stamp has stood still for one interval
        errors: list[str] = []
        prices = load_price_file(self._file, "price file", errors)
        if self._stamp() != stamp:
            return  # written while we read it
        if errors and not prices and self._file_prices:
            logger.warning("otel-tokens: keeping the %d prices read earlier from %s",
                           len(self._file_prices), self._file)
        else:
            if not first:
                _warn_on_drops(self._file, self._file_prices, prices)
            self._file_prices = prices
        self.errors = [e for e in self.errors if str(self._file) not in e] + errors
        self._file_stamp = stamp
        self._cache = {}
        self._dearest = None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            self._next_check = now + self._interval
            if self._stamp() != self._file_stamp:
                self._reload_file()

    # --- lookup and cost ---
    def entries(self) -> Sequence[Price]:
        return [*self._inline, *self._file_prices, *self._builtin]

    def lookup(self, provider: str, model: str) -> Price | None:
        if self._file is not None:
            self._maybe_reload()
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next((p for p in self.entries() if p.matches(provider, model)), None)
        self._cache[key] = found
        return found

    def cost(self, provider: str, model: str, input_tokens: int | None, output_tokens: int | None,
             cached_input_tokens: int | None = None) -> Cost | None:
        price = self.lookup(provider, model)
        if price is None:
            if (provider, model) not in self.unpriced:
                self.unpriced.add((provider, model))
                log_once(f"unpriced:{provider}:{model}",
                         "otel-tokens: no price for model %r (provider %r); its calls get no cost. "
                         "Add it to the price file.", model, provider)
            return None
        rate = self.rate(price.currency)
        if rate is None:
            return None
        cached = min(cached_input_tokens or 0, input_tokens or 0)
        cached_price = price.input if price.cached_input is None else price.cached_input
        cost_in = ((input_tokens or 0) - cached) * price.input + cached * cached_price
        return Cost(input=cost_in * rate / PER, output=(output_tokens or 0) * price.output * rate / PER,
                    currency=self.currency)

    def cost_of(self, provider: str, model: str, input_tokens: int | None, output_tokens: int | None,
                cached_input_tokens: int | None = None, *, asked: str | None = None,
                worst_case: bool = False) -> Cost | None:
        """The one price rule, for budget mode's reservation before a call and the recorder's cost after it:
        the price of `model` (what the reply names), else of `asked` (the model requested: a dated snapshot
        may lack the price its alias has). With neither priced, `worst_case` prices at the dearest entry
        known (a reservation under a cost limit must not be free); otherwise None."""
        if asked and asked != model and self.lookup(provider, model) is None:
            model = asked
        cost = self.cost(provider, model, input_tokens, output_tokens, cached_input_tokens)
        if cost is None and worst_case:
            dearest_in, dearest_out = self.dearest()
            return Cost((input_tokens or 0) * dearest_in / PER, (output_tokens or 0) * dearest_out / PER,
                        self.currency)
        return cost

    def dearest(self) -> tuple[float, float]:
        """The highest input and output price per million tokens of any entry, in the reporting
        currency: what budget mode reserves for a model with no price under a cost limit."""
        if self._file is not None:
            self._maybe_reload()
        dearest = self._dearest
        if dearest is None:
            rates = [(self.rate(p.currency), p) for p in self.entries()]
            dearest = self._dearest = (max((p.input * r for r, p in rates if r), default=0.0),
                                       max((p.output * r for r, p in rates if r), default=0.0))
        return dearest

    def rate(self, currency: str) -> float | None:
        if currency == self.currency:
            return 1.0
        rate = self.rates.get(currency)
        if rate is None:
            log_once(f"norate:{currency}", "otel-tokens: no exchange rate from %s to %s (set exchange_rates in "
                     "the config); calls priced in %s get no cost", currency, self.currency, currency)
        return rate
