"""Shared pytest setup. Slow fixtures (servers) live in plugin modules listed here."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.serve_fixtures",
    "tests.prometheus_fixtures",
    "tests.mlflow_fixtures",
]
