"""Real binaries the tests start (Prometheus, Alertmanager, promtool, amtool...)."""

from __future__ import annotations

import pytest

# binary -> Debian package, when not Prometheus's
PACKAGES = {"redis-server": "redis-server", "redis-cli": "redis-tools", "victoria-metrics": "victoria-metrics",
            "vmalert": "victoria-metrics", "vmagent": "victoria-metrics", "systemd-analyze": "systemd"}


def require_binary(name: str) -> str:
    """Path of a binary the test needs: in CI a missing one fails the test, elsewhere it skips."""
    import os
    import shutil

    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, "prometheus prometheus-alertmanager")
        message = f"{name} is not installed (Debian: apt-get install -y {package}; `make test` installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
