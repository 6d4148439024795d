"""A WSGI app answering with the ids the trusted headers give for its request (JSON), as the package reads
them: the same bytes must give the same ids under wsgiref, gunicorn and an ASGI server."""

from __future__ import annotations

import json
from typing import Any

from otel_tokens.web.headers import TrustedHeaders
from otel_tokens.web.wsgi import environ_values

TRUSTED = TrustedHeaders({"user.id": "x-forwarded-user", "department": "x-forwarded-groups"})


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.dumps(environ_values(environ, TRUSTED)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
