"""Secrets for `kpigate serve` and `kpigate relay` come from the environment or mounted files,
never only from argv; an unreadable secret file is a clear exit 2 (the reader itself,
kpigate/secrets.py, is tested in tests/test_secrets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpigate.cli import build_parser, main
from kpigate.relay.cli import make_trigger
from kpigate.serve.cli import config_from_args


def test_serve_reads_the_database_url_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "db-url"
    secret.write_text("postgresql+psycopg://kpigate:s3cret@db/kpigate")
    monkeypatch.delenv("KPIGATE_DB_URL", raising=False)
    monkeypatch.setenv("KPIGATE_DB_URL_FILE", str(secret))
    args = build_parser("serve").parse_args(["serve"])
    assert config_from_args(args).db_url == "postgresql+psycopg://kpigate:s3cret@db/kpigate"
    # An explicit flag still wins (a URL without a password).
    args = build_parser("serve").parse_args(["serve", "--db-url", "sqlite:///x.db"])
    assert config_from_args(args).db_url == "sqlite:///x.db"


def test_an_unreadable_secret_file_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KPIGATE_DB_URL", raising=False)
    monkeypatch.setenv("KPIGATE_DB_URL_FILE", str(tmp_path / "missing"))
    assert main(["serve"]) == 2
    assert "KPIGATE_DB_URL_FILE" in capsys.readouterr().err


def test_the_help_names_every_secret_variable(capsys: pytest.CaptureFixture[str]) -> None:
    for command, names in (
        ("serve", ["KPIGATE_DB_URL_FILE", "KPIGATE_ADMIN_TOKEN_FILE"]),
        (
            "relay",
            ["KPIGATE_WEBHOOK_SECRET_FILE", "KPIGATE_RELAY_DB_URL_FILE", "KPIGATE_ARGO_TOKEN_FILE"],
        ),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(name in text for name in names), (command, text)


def test_the_relay_reads_the_argo_token_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "argo-token"
    token.write_text("Bearer abc\n")
    monkeypatch.delenv("ARGO_TOKEN", raising=False)
    monkeypatch.setenv("ARGO_TOKEN_FILE", str(token))
    args = build_parser("relay").parse_args(["relay", "--trigger", "argo", "--argo-server", "h"])
    assert make_trigger(args).token == "Bearer abc"  # type: ignore[attr-defined]
