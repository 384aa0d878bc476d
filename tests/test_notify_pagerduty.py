"""PagerDuty Events v2 through the official client, against a local TLS server.

The `pagerduty` client only accepts https base URLs, so the stand-in server speaks TLS with
a throwaway certificate for 127.0.0.1 that the notifier is told to trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_httpserver import HTTPServer

from kpigate.notify import NotifyError, Severity
from kpigate.notify.pagerduty import PagerDutyNotifier

ROUTING_KEY = "R0UT1NGsEcReTkEy0000000000000000"
ACCEPTED = {"status": "success", "message": "Event processed", "dedup_key": "kpigate/r-7"}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HTTPServer, ssl.SSLContext]]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=server_context)
    server.start()
    try:
        yield server, ssl.create_default_context(cafile=str(cert))
    finally:
        server.clear()
        server.stop()


@pytest.fixture
def pagerduty(
    tls: tuple[HTTPServer, ssl.SSLContext],
) -> Iterator[tuple[HTTPServer, PagerDutyNotifier]]:
    server, trust = tls
    server.clear()
    notifier = PagerDutyNotifier(
        ROUTING_KEY, base_url=f"https://127.0.0.1:{server.port}", verify=trust
    )
    yield server, notifier


def test_critical_triggers_an_incident_keyed_by_rollout(
    pagerduty: tuple[HTTPServer, PagerDutyNotifier],
) -> None:
    server, notifier = pagerduty
    server.expect_request("/v2/enqueue", method="POST").respond_with_json(ACCEPTED, status=202)
    fields = {"rollout": "r-7", "kind": "rollback", "model": "fraud", "stage": "25%"}
    notifier.post(Severity.CRITICAL, "fraud v2 rolled back at 25%: recall worse", fields)
    notifier.post(Severity.CRITICAL, "fraud v2 rollback failed to apply", fields)
    bodies = [request.get_json() for request, _ in server.log]
    assert len(bodies) == 2
    first = bodies[0]
    assert first["routing_key"] == ROUTING_KEY
    assert first["event_action"] == "trigger"
    assert first["dedup_key"] == "kpigate/r-7"
    assert first["payload"] == {
        "summary": "fraud v2 rolled back at 25%: recall worse",
        "source": "kpigate",
        "severity": "critical",
        "group": "kpigate",
        "class": "rollback",
        "component": "fraud",
        "custom_details": fields,
    }
    # a second critical message of the same rollout updates the same incident
    assert bodies[1]["dedup_key"] == first["dedup_key"]


@pytest.mark.parametrize("severity", [Severity.WARNING, Severity.INFO])
def test_only_critical_pages(
    pagerduty: tuple[HTTPServer, PagerDutyNotifier], severity: Severity
) -> None:
    server, notifier = pagerduty
    notifier.post(severity, "fraud v2 held at 50%", {"rollout": "r-7"})
    assert server.log == []


def test_a_refused_event_is_a_notify_error_without_the_key(
    pagerduty: tuple[HTTPServer, PagerDutyNotifier], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, notifier = pagerduty
    server.expect_request("/v2/enqueue").respond_with_json(
        {"status": "invalid event", "message": "Event object is invalid", "errors": ["bad key"]},
        status=400,
    )
    with pytest.raises(NotifyError, match="PagerDuty event not accepted") as err:
        notifier.post(Severity.CRITICAL, "m", {"rollout": "r-7"})
    assert "sEcReT" not in str(err.value)
    assert all("sEcReT" not in r.getMessage() for r in caplog.records if r.name != "werkzeug")


def test_a_plain_http_events_url_is_refused_with_a_hint() -> None:
    with pytest.raises(NotifyError, match="https"):
        PagerDutyNotifier(ROUTING_KEY, base_url="http://127.0.0.1:1")
