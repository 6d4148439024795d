"""The one HTTP client for Prometheus (and Prometheus-compatible APIs): instant and range queries,
metric presence, alert state, reload. Used in the app (the guard's refresh) and by the operations
tools (report, rules --reload). Standard library only: nothing to install in the app.

Prometheus and Alertmanager behind `--web.config.file` basic auth: credentials come from the URL's
userinfo (`http://user:pass@prometheus:9090`) or, for every Prometheus-compatible URL the operator
configured, from OTEL_TOKENS_PROMETHEUS_USER with OTEL_TOKENS_PROMETHEUS_PASSWORD_FILE (or
OTEL_TOKENS_PROMETHEUS_PASSWORD). They are sent as a header, never left in a URL that is logged."""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# PrometheusError.kind
BAD_URL, REFUSED, UNREACHABLE, NOT_PROMETHEUS = "bad_url", "refused", "unreachable", "not_prometheus"


ENV_USER = "OTEL_TOKENS_PROMETHEUS_USER"
ENV_PASSWORD = "OTEL_TOKENS_PROMETHEUS_PASSWORD"
ENV_PASSWORD_FILE = "OTEL_TOKENS_PROMETHEUS_PASSWORD_FILE"


def with_credentials(url: str, environ: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(the URL without userinfo, the Authorization header to send with it: {} when none is configured).
    ValueError names the variable when the password file cannot be read."""
    environ = os.environ if environ is None else environ
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        host = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=host))
    elif environ.get(ENV_USER):
        user = environ[ENV_USER]
        if environ.get(ENV_PASSWORD_FILE):
            try:
                with open(environ[ENV_PASSWORD_FILE], encoding="utf-8") as file:
                    password = file.read().strip()
            except OSError as error:
                raise ValueError(f"{ENV_PASSWORD_FILE}: cannot read {environ[ENV_PASSWORD_FILE]}: "
                                 f"{error.strerror}") from None
        else:
            password = environ.get(ENV_PASSWORD, "")
    else:
        return url, {}
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return url, {"Authorization": f"Basic {token}"}


def unauthorized(url: str, status: int, sent: bool) -> str:
    """The one-line message for a 401/403 from a Prometheus-compatible API."""
    if sent:
        return f"{url} refused the credentials sent (HTTP {status}): check {ENV_USER} / {ENV_PASSWORD_FILE}"
    return (f"{url} asks for credentials (HTTP {status}): set {ENV_USER} and {ENV_PASSWORD_FILE} "
            "(or put user:password@ in the URL)")


def redacted(url: str) -> str:
    """A URL fit for a log line: userinfo removed."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc \
        else url


class PrometheusError(Exception):
    """One line that says what failed; `kind` says whose fault (the URL, the query, the network)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def get_json(url: str, timeout: float, headers: Mapping[str, str] | None = None,
             max_bytes: int = 64 << 20) -> tuple[int, Any, str | None]:
    """GET a JSON document (the guard's state endpoint, Alertmanager's or Prometheus's alerts):
    (status, body or None for 304, ETag). A body over `max_bytes` is an error, not a memory spike."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    deadline = time.monotonic() + 2 * timeout  # a trickled answer must not hold the caller past this
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            chunks, size = [], 0
            while chunk := response.read1(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"answer larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"answer not complete within {2 * timeout:g} s")
            return response.status, json.loads(b"".join(chunks)), response.headers.get("etag")
    except urllib.error.HTTPError as error:
        if error.code == 304:
            return 304, None, error.headers.get("etag")
        raise


def _timestamp(t: float) -> str:
    return f"{t:.3f}"


class Prometheus:
    def __init__(self, url: str, timeout: float = 60.0) -> None:
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        if not url.startswith(("http://", "https://")):
            raise PrometheusError(f"bad Prometheus URL {redacted(url)!r}: use http://host:port", BAD_URL)
        try:
            url, self.headers = with_credentials(url)
        except ValueError as error:
            raise PrometheusError(str(error), BAD_URL) from None
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _open(self, target: str, method: str | None = None, timeout: float | None = None) -> Any:
        request = urllib.request.Request(target, headers=self.headers, method=method)
        return urllib.request.urlopen(request, timeout=self.timeout if timeout is None else timeout)

    def get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        target = f"{self.url}{path}?{urllib.parse.urlencode(list(params))}"
        try:
            with self._open(target) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise PrometheusError(unauthorized(self.url, error.code, bool(self.headers)), REFUSED) from None
            body = error.read()
            try:
                detail = json.loads(body).get("error") or error.reason
            except (ValueError, AttributeError):
                raise PrometheusError(f"{self.url} is not a Prometheus HTTP API (HTTP {error.code} for {path})",
                                      NOT_PROMETHEUS) from None
            raise PrometheusError(f"Prometheus at {self.url} refused {path}: {detail}", REFUSED) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {reason}", UNREACHABLE) from None
        try:
            payload = json.loads(body)
            if payload["status"] != "success":
                raise PrometheusError(f"Prometheus at {self.url} answered {path} with an error: "
                                      f"{payload.get('error')}", REFUSED)
            return payload["data"]
        except (ValueError, KeyError, TypeError):
            raise PrometheusError(f"{self.url} is not a Prometheus HTTP API (unreadable answer to {path})",
                                  NOT_PROMETHEUS) from None

    def instant(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
        data = self.get("/api/v1/query", [("query", promql), ("time", _timestamp(at))])
        if data.get("resultType") != "vector":
            return []
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def range(self, promql: str, start: float, end: float, step: float
              ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        data = self.get("/api/v1/query_range", [("query", promql), ("start", _timestamp(start)),
                                                ("end", _timestamp(end)), ("step", _timestamp(step))])
        return [(item["metric"], [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]

    def samples(self, promql: str, at: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """The raw samples of a range selector (`metric[1h]`) ending at `at`, per series, oldest first."""
        data = self.get("/api/v1/query", [("query", promql), ("time", _timestamp(at))])
        if data.get("resultType") != "matrix":
            return []
        return [(item["metric"], [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]

    def own_metric(self, name: str) -> float | None:
        """A sample without labels of the server's own /metrics, or None where it does not say."""
        try:
            with self._open(self.url + "/metrics") as response:
                text = response.read(32 << 20).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        match = re.search(rf"^{re.escape(name)}\s+(\S+)\s*$", text, re.MULTILINE)
        if match is None:
            return None
        try:
            return float(match.group(1))
        except ValueError:
            return None

    def oldest_sample(self) -> float | None:
        """The oldest sample time the TSDB still holds (Prometheus's own
        `prometheus_tsdb_lowest_timestamp_seconds` on its /metrics), or None where the server does not
        say (VictoriaMetrics, Mimir, a proxy)."""
        value = self.own_metric("prometheus_tsdb_lowest_timestamp_seconds")
        return value if value is not None and value == value and 0 < value < 1e11 else None

    def present(self, metrics: Iterable[str]) -> set[str]:
        """Which of these metric names Prometheus holds any series of (at any time)."""
        wanted = list(metrics)
        matcher = '{__name__=~"' + "|".join(re.escape(m) for m in wanted) + '"}'
        found = self.get("/api/v1/label/__name__/values", [("match[]", matcher)])
        return {m for m in wanted if m in set(found or ())}

    def reload(self, timeout: float = 10.0) -> None:
        """POST /-/reload (Prometheus started with --web.enable-lifecycle): new rule files, no restart."""
        target = self.url + "/-/reload"
        try:
            with self._open(target, method="POST", timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as error:
            raise PrometheusError(f"POST {target}: {error}", UNREACHABLE) from None
