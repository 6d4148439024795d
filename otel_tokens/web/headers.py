"""Reading attribution from request headers that an authenticating proxy sets.

Only headers the operator named are read, and a value is taken only when it is unambiguous: a header
sent twice (a client's copy beside the proxy's) or longer than an id can be is ignored, so the call
is unattributed rather than charged to whoever the client claimed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from otel_tokens import names
from otel_tokens.attribution.context import safe_value
from otel_tokens.attribution.directory import installed
from otel_tokens.logs import internal_error, log_once

MAX_ID_LENGTH = 256  # characters; a longer "id" is an attack on the metrics backend, not a user
_KWARGS = {"user_id": names.USER_ID, "department": names.DEPARTMENT, "session_id": names.SESSION_ID}

Identify = Callable[[Any], "Mapping[str, Any] | None"]


def clean(header: str, raw: bytes | str) -> str | None:
    """The id a header carries, or None when there is none or it cannot be one."""
    if isinstance(raw, str):
        raw = raw.encode("latin-1", "replace")  # WSGI gives headers as latin-1 text (PEP 3333)
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        # not what a proxy sends, or cut by the server: wsgiref reads headers as text lines and cuts at
        # bytes such as 0x85 (`ｅ`, U+FF45, ends in it). Nobody's id rather than a different one per server.
        log_once(f"header-utf8:{header}", "otel-tokens: trusted header %s is not UTF-8 (or the server cut it); "
                 "ignored (the call is unattributed)", header)
        return None
    if not value:
        return None
    if "," in value:  # a client's copy merged with the proxy's by a server (WSGI) or a gateway: ambiguous
        log_once(f"header-list:{header}", "otel-tokens: trusted header %s holds a list (a client's copy merged "
                 "with the proxy's, or several groups); ignored (the call is unattributed): the proxy must "
                 "replace the header and send one value", header)
        return None
    if len(value) > MAX_ID_LENGTH:
        log_once(f"header-long:{header}", "otel-tokens: trusted header %s is longer than %d characters; "
                 "ignored (the call is unattributed)", header, MAX_ID_LENGTH)
        return None
    return safe_value(value)


class TrustedHeaders:
    """attribute -> header name, as `trusted_headers` configures it, read only from the peers in
    `trusted_proxies` (CIDRs, `unix` for a Unix socket; none given: any peer, which start() warns about)."""

    def __init__(self, mapping: Mapping[str, str], proxies: Sequence[str] = (),
                 groups: tuple[str, Mapping[str, str]] | None = None) -> None:
        self.mapping = {attribute: header.lower() for attribute, header in mapping.items()}
        # the department from a group-list header, where no department header is mapped
        self.groups = (groups[0].lower(), dict(groups[1])) if groups and names.DEPARTMENT not in self.mapping \
            else None
        self._group_asgi = self.groups[0].encode("latin-1") if self.groups else b""
        self._group_wsgi = "HTTP_" + self.groups[0].upper().replace("-", "_") if self.groups else ""
        self.any_peer = not proxies
        self.unix = "unix" in proxies
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in proxies if p not in ("unix", "none"))
        self._asgi = {header.encode("latin-1"): attribute for attribute, header in self.mapping.items()}
        self._wsgi = tuple((attribute, header, "HTTP_" + header.upper().replace("-", "_"))
                           for attribute, header in self.mapping.items())

    def trusts(self, peer: str | None) -> bool:
        """Whether a request from `peer` (its address; None or "" over a Unix socket) may name its user."""
        if self.any_peer:
            return True
        if not peer:
            ok = self.unix
        else:
            try:
                address = ipaddress.ip_address(peer.strip("[]").split("%")[0])
                ok = any(address in network for network in self.networks)
            except ValueError:
                ok = False
        if not ok:
            # one key, not one per peer: a client spraying addresses must not grow the set of things said
            log_once("untrusted-peer", "otel-tokens: trusted headers from %s, which is not in trusted_proxies; "
                     "ignored (the call is unattributed; said once, for the first such peer): a client reaching "
                     "the app directly must not name its user", str(peer)[:64] if peer else "a Unix socket")
        return ok

    def from_asgi(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        found: dict[str, bytes] = {}
        twice: set[str] = set()
        wanted = self._asgi
        group_lists: list[bytes] = []
        for name, value in headers:
            attribute = wanted.get(name.lower())
            if attribute is None:
                if self.groups is not None and name.lower() == self._group_asgi:
                    group_lists.append(value)
                continue
            if attribute in found:
                twice.add(attribute)
            found[attribute] = value
        values = {}
        for attribute, raw in found.items():
            header = self.mapping[attribute]
            if attribute in twice:
                log_once(f"header-twice:{header}", "otel-tokens: trusted header %s arrived more than once (a "
                         "client's copy beside the proxy's?); ignored: the proxy must replace it", header)
                continue
            value = clean(header, raw)
            if value is not None:
                values[attribute] = value
        if group_lists:
            self._group_department(group_lists, values)
        return values

    def from_environ(self, environ: Mapping[str, Any]) -> dict[str, str]:
        values = {}
        for attribute, header, key in self._wsgi:
            raw = environ.get(key)
            if isinstance(raw, str):
                value = clean(header, raw)
                if value is not None:
                    values[attribute] = value
        if self.groups is not None and isinstance(environ.get(self._group_wsgi), str):
            self._group_department([environ[self._group_wsgi]], values)
        return values

    def _group_department(self, raws: list[bytes] | list[str], values: dict[str, str]) -> None:
        """The one department the groups of a group-list header mean. Sent twice, naming groups of two
        departments, or none mapped: no department (the call keeps the directory's, or is unattributed)."""
        assert self.groups is not None
        header, departments = self.groups
        if len(raws) > 1:
            log_once(f"header-twice:{header}", "otel-tokens: trusted group header %s arrived more than once (a "
                     "client's copy beside the proxy's?); ignored: the proxy must replace it", header)
            return
        raw = raws[0]
        try:
            text = (raw.encode("latin-1", "replace") if isinstance(raw, str) else raw).decode("utf-8")
        except UnicodeDecodeError:
            return
        if len(text) > 64 * MAX_ID_LENGTH:
            return
        found = {departments[g.strip()] for g in text.split(",") if g.strip() in departments}
        if len(found) > 1:
            log_once(f"groups-ambiguous:{header}", "otel-tokens: trusted group header %s names groups of several "
                     "departments (%s); no department taken from it", header, ", ".join(sorted(found)[:5]))
        elif found:
            values[names.DEPARTMENT] = safe_value(found.pop())


def read_headers(read: Callable[[], dict[str, str]]) -> dict[str, str]:
    """A malformed header list (not what a server sends) costs the attribution, never the request. The
    directory (operator data) completes, or replaces, what the headers said, as the operator chose."""
    try:
        values = read()
        directory = installed()
        return directory.for_request(values) if directory is not None and values else values
    except Exception:
        internal_error("trusted headers")
        return {}


def identified(identify: Identify, request: Any) -> dict[str, str]:
    """What an app's `identify(scope or environ)` returns ({user_id, department, session_id}), made safe.
    An exception inside `identify` is the app's own and reaches it; a return that is not a mapping of
    names to str/int ids is logged and ignored."""
    claimed = identify(request)
    if not claimed:
        return {}
    if not isinstance(claimed, Mapping):
        log_once("identify-type", "otel-tokens: identify() returned %s, not a mapping like {'user_id': ...}; "
                 "ignored", type(claimed).__name__)
        return {}
    values = {}
    for key, value in claimed.items():
        attribute = _KWARGS.get(key, key)
        if attribute not in names.BAGGAGE_KEYS or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            log_once("identify-value", "otel-tokens: identify() gave %s a %s, not a str or int id; ignored",
                     key, type(value).__name__)
            continue
        value = str(value).strip()
        if value and len(value) <= MAX_ID_LENGTH:
            values[attribute] = safe_value(value)
    return values


def resolve(headers: Mapping[str, str] | None, identify: Identify | None, who: str,
            proxies: Sequence[str] | None = None) -> TrustedHeaders | None:
    """The headers a middleware reads: given, or `trusted_headers` from the config; one source is required.
    `proxies`: given, or `trusted_proxies` from the config."""
    from otel_tokens.config import load_settings

    settings = load_settings() if (not headers and identify is None) or (headers and proxies is None) else None
    if not headers and identify is None:
        headers = settings.trusted_headers if settings is not None else None
        if not headers:
            raise ValueError(f"{who}: give identify= (a function of the request) or headers= (attribute -> "
                             "header set by your authenticating proxy), or set OTEL_TOKENS_TRUSTED_HEADERS")
    if not headers:
        return None
    from otel_tokens.config.fields import trusted_headers, trusted_proxies

    if proxies is None:
        proxies = settings.trusted_proxies if settings is not None else ()
    elif proxies:
        proxies = trusted_proxies(list(proxies))
    groups = settings.trusted_groups if settings is not None else None
    return checked(TrustedHeaders(trusted_headers(dict(headers)), proxies or (), groups))


def checked(trusted: TrustedHeaders) -> TrustedHeaders:
    """Says once, at start, when any client reaching the app can name its user."""
    if trusted.any_peer:
        log_once("trusted-any-peer", "otel-tokens: trusted_headers (%s) are read from any peer: a client that "
                 "reaches the app directly can name its user. Bind the app where only the authenticating proxy "
                 "reaches it, or set trusted_proxies (OTEL_TOKENS_TRUSTED_PROXIES) to the proxy's addresses",
                 ", ".join(trusted.mapping.values()))
    return trusted
