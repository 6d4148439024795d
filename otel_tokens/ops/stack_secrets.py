"""`otel-tokens stack-secrets DIR`: every credential the shipped compose stack requires, made once.

The stack starts only with them (compose refuses an unset one): the collector's OTLP bearer token, the
guard's token, Redis's password, Grafana's admin password go to DIR/.env; the password that Prometheus
and Alertmanager ask of every client (basic auth through `--web.config.file`, which takes a bcrypt hash)
goes to DIR/secrets/, with the web config holding its hash. Existing values are kept: running it again
adds only what is missing, so a stack's apps never lose their tokens.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

WEB_USER = "otel-tokens"  # the basic-auth user of Prometheus and Alertmanager
ENV_SECRETS = ("OTEL_TOKENS_OTLP_TOKEN", "OTEL_TOKENS_GUARD_TOKEN", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
PASSWORD_FILE = "prometheus-password"
WEB_CONFIG = "web.yml"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def _env_values(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[name.strip()] = value.strip()
    return values


def write(directory: Path) -> list[str]:
    """Creates what is missing under `directory`; returns what it created (names, never values)."""
    import bcrypt  # the `stack` extra: Prometheus's web config takes bcrypt hashes only
    import yaml

    created: list[str] = []
    env_file = directory / ".env"
    values = _env_values(env_file)
    missing = [name for name in ENV_SECRETS if not values.get(name)]
    if missing:
        lines = env_file.read_text(encoding="utf-8").splitlines() if env_file.exists() else []
        lines = [line for line in lines if line.partition("=")[0].strip() not in missing]
        lines += [f"{name}={secrets.token_hex(32)}" for name in missing]
        _write_private(env_file, "\n".join(lines) + "\n")
        created += [f"{env_file}: {name}" for name in missing]
    folder = directory / "secrets"
    folder.mkdir(exist_ok=True)  # the containers' own users (Prometheus runs as nobody) must read it
    password_file = folder / PASSWORD_FILE
    if not password_file.exists() or not password_file.read_text(encoding="utf-8").strip():
        _write_private(password_file, secrets.token_hex(24) + "\n")
        created.append(str(password_file))
    password = password_file.read_text(encoding="utf-8").strip()
    web = folder / WEB_CONFIG
    current = yaml.safe_load(web.read_text(encoding="utf-8")) if web.exists() else None
    stored = ((current or {}).get("basic_auth_users") or {}).get(WEB_USER, "")
    if not stored or not bcrypt.checkpw(password.encode(), str(stored).encode()):
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        _write_private(web, "# Prometheus and Alertmanager --web.config.file: basic auth for every client.\n"
                       "# Made by `otel-tokens stack-secrets`; the password is in prometheus-password beside it.\n"
                       + yaml.safe_dump({"basic_auth_users": {WEB_USER: hashed}}))
        os.chmod(web, 0o644)  # read by the containers' own users (nobody), holds only a hash
        created.append(str(web))
    os.chmod(password_file, 0o644)  # read by Prometheus, Grafana, the guard and the digest in their containers
    # (bind mounts keep the host's modes; on a shared host, chown these to the containers' users instead)
    return created
