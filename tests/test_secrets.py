"""Secrets from the environment or a file (kpigate/secrets.py), and `kpigate submit` taking its
Argo token that way through the real CLI, against a local HTTP server standing in for Argo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from kpigate.secrets import SecretError, read_secret

NAME = "KPIGATE_TEST_TOKEN"


def test_the_flag_then_the_variable_then_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert read_secret(NAME, env={}) is None
    assert read_secret(NAME, env={f"{NAME}_FILE": str(path)}) == "from-file"
    assert read_secret(NAME, env={NAME: "from-env"}) == "from-env"
    assert read_secret(NAME, "from-flag", env={NAME: "from-env"}) == "from-flag"
    path.write_text("crlf\r\n")
    assert read_secret(NAME, env={f"{NAME}_FILE": str(path)}) == "crlf"


def test_ambiguous_missing_or_empty_secrets_are_errors_that_never_show_the_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("hunter2-hunter2")
    with pytest.raises(SecretError, match=f"both {NAME} and {NAME}_FILE") as caught:
        read_secret(NAME, env={NAME: "hunter2-hunter2", f"{NAME}_FILE": str(path)})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(SecretError, match="cannot read it"):
        read_secret(NAME, env={f"{NAME}_FILE": str(tmp_path / "missing")})
    path.write_text("\n")
    with pytest.raises(SecretError, match="the file is empty"):
        read_secret(NAME, env={f"{NAME}_FILE": str(path)})


def _submit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "ARGO" not in k}
    return subprocess.run(
        [sys.executable, "-m", "kpigate.cli", "submit", *args],
        capture_output=True, text=True, timeout=120, env={**clean, **env},
    )  # fmt: skip


def _created(request: Request) -> Response:
    workflow = json.loads(request.data)["workflow"]
    workflow["metadata"]["name"] = workflow["metadata"]["generateName"] + "abc12"
    return Response(json.dumps(workflow), content_type="application/json")


def test_submit_reads_the_argo_token_from_a_file_not_argv(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    token = tmp_path / "argo-token"
    token.write_text("file-token-42\n")
    httpserver.expect_request(
        "/api/v1/workflows/argo", method="POST", headers={"Authorization": "Bearer file-token-42"}
    ).respond_with_handler(_created)
    done = _submit("--model-version", "7", "--host", httpserver.url_for("/"),
                   KPIGATE_ARGO_TOKEN_FILE=str(token))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "submitted argo/progressive-delivery-abc12" in done.stdout
    assert len(httpserver.log) == 1


def test_submit_refuses_an_ambiguous_token_with_exit_2_and_documents_the_forms(
    tmp_path: Path,
) -> None:
    token = tmp_path / "argo-token"
    token.write_text("x")
    done = _submit("--model-version", "7", "--host", "http://127.0.0.1:9",
                   KPIGATE_ARGO_TOKEN="y", KPIGATE_ARGO_TOKEN_FILE=str(token))  # fmt: skip
    assert done.returncode == 2
    assert "both KPIGATE_ARGO_TOKEN and KPIGATE_ARGO_TOKEN_FILE" in done.stderr
    assert "Traceback" not in done.stderr
    help_text = " ".join(_submit("--help").stdout.split())
    assert "KPIGATE_ARGO_TOKEN or KPIGATE_ARGO_TOKEN_FILE" in help_text
    assert "visible in ps" in help_text
