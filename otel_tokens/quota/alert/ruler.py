"""The rule engine's own alert state: the only thing alert mode believes.

Prometheus's or vmalert's `GET /api/v1/alerts` is computed by the ruler from its rules; no HTTP client
can write it (Alertmanager's API takes alerts from anyone who reaches it, and an `ALERTS` series can be
forged by any metric producer). A ruler that has just started holds no `for:` state, so its empty answer
would unblock everyone for a while: its answers may lift a block only once it has been up longer than
its largest `for:` plus two evaluation intervals. With several rulers (an HA pair, shards) the firing
alerts are their union, and a block is lifted only when every ruler answered and is past that warm-up.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from otel_tokens.prometheus_api import Prometheus, PrometheusError, get_json, redacted, unauthorized
from otel_tokens.quota import vocabulary
from otel_tokens.quota.alert.state import Entry, Key, PayloadError, parse_active

ALERTS_PATH = "/api/v1/alerts"


@dataclass
class RulerAnswer:
    """What the rulers say is firing, whether that answer may lift blocks, and why not."""

    firing: dict[Key, Entry]
    may_lift: bool = True
    held_because: list[str] = field(default_factory=list)


class Ruler:
    """One rule engine: Prometheus or vmalert, given as its base URL or its .../api/v1/alerts URL. Its alert
    list is read with the guard's bounded reader (size and time capped: the answer decides enforcement);
    its start and rules through the project's one Prometheus client."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"ruler URL {redacted(url)!r} is not http(s)://host:port of Prometheus or vmalert")
        if url.endswith(ALERTS_PATH):
            url = url[: -len(ALERTS_PATH)]
        try:
            self.api = Prometheus(url, timeout)  # credentials from the URL or the environment
        except PrometheusError as error:
            raise ValueError(str(error)) from None

    def __str__(self) -> str:
        return self.api.url + ALERTS_PATH

    def firing(self) -> dict[Key, Entry]:
        """The firing quota alerts; PayloadError when the answer is not a ruler's (Alertmanager's
        `/api/v1/alerts` is a list under `data`, refused here)."""
        try:
            status, body, _ = get_json(self.api.url + ALERTS_PATH, self.api.timeout, self.api.headers)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise PermissionError(unauthorized(self.api.url, error.code, bool(self.api.headers))) from None
            raise
        if status != 200:
            raise PayloadError(f"{self} answered HTTP {status}")
        return parse_active(body, prometheus=True)

    def started(self) -> float:
        """The ruler's start, Unix seconds: Prometheus's runtime info, else `process_start_time_seconds`
        on its /metrics (vmalert has no runtime info)."""
        try:
            start = str(self.api.get("/api/v1/status/runtimeinfo", [])["startTime"])
            return datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
        except (PrometheusError, KeyError, TypeError, ValueError):
            pass
        value = self.api.own_metric("process_start_time_seconds")
        if value is None:
            raise PayloadError(f"{self.api.url} says neither /api/v1/status/runtimeinfo nor "
                               "process_start_time_seconds")
        return value

    def warm_up(self) -> float:
        """Seconds after a start before an absent quota alert means resolved: the largest `for:` plus two
        evaluation intervals of its group, over the alerts the guard acts on (a forecast's `for: 30m` is
        not one of them). A ruler that holds none of them: two minutes."""
        groups = self.api.get("/api/v1/rules", [("type", "alert")])["groups"]
        needed = [float(rule.get("duration") or 0) + 2 * float(group.get("interval") or 60)
                  for group in groups for rule in group.get("rules", [])
                  if rule.get("type") == "alerting" and rule.get("name") in vocabulary.ALERTS]
        return max(needed, default=120.0)

    def lift_blocked_because(self, now: float | None = None) -> str | None:
        """None when this ruler's answers may lift blocks, else why not."""
        now = time.time() if now is None else now
        try:
            up, needed = now - self.started(), self.warm_up()
        except Exception as error:
            return f"{self} cannot say how long it has been up ({str(error)[:200]})"
        if up < needed:
            return f"{self} restarted {up:.0f} s ago; its quota alerts need {needed:.0f} s (`for:` + 2 evaluations)"
        return None


class Rulers:
    """The union of one or more rulers' firing quota alerts."""

    def __init__(self, urls: Sequence[str] | str, timeout: float = 5.0) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("no ruler given: the Prometheus or vmalert URL whose /api/v1/alerts the guard reads")
        self.rulers = [Ruler(url, timeout) for url in urls]

    def __str__(self) -> str:
        return ", ".join(map(str, self.rulers))

    def read(self, held: Collection[Key] = ()) -> RulerAnswer:
        """Raises when no ruler answers. `held`: the keys blocked now; only when an answer leaves one of
        them out is the rulers' warm-up asked (one request more each, and only then)."""
        firing: dict[Key, Entry] = {}
        reasons, answered = [], []
        for ruler in self.rulers:
            try:
                found = ruler.firing()
            except Exception as error:
                if len(self.rulers) == 1:
                    raise
                reasons.append(f"{ruler} did not answer ({str(error)[:200]})")
                continue
            answered.append(ruler)
            for key, entry in found.items():
                firing.setdefault(key, entry)
        if not answered:
            raise ConnectionError("; ".join(reasons))
        if any(key not in firing for key in held):
            reasons += [reason for ruler in answered if (reason := ruler.lift_blocked_because()) is not None]
        return RulerAnswer(firing, not reasons, reasons)

