"""The router benchmark's harness reads wrk right and judges the targets on the right pairs.

Nothing here starts a server or times anything: measurements are made up, and the speed targets
live in `make bench-router` only (bench/router_bench.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import router_report as rr  # bench/ is not a package
from bench_venvs import VenvSpec
from wrk_load import Measurement, lua_script, parse_wrk

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:8080/predict
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   105.68ms   50.12ms   1.41s    70.00%
    Req/Sec    73.80     31.46   161.00     68.52%
  Latency Distribution
     50%  812.00us
     75%  130.00ms
     90%  200.00ms
     99%    1.41s
  4160 requests in 3.01s, 800.00KB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   1382.39
Transfer/sec:    265.80KB
"""


def test_wrk_output_gives_throughput_percentiles_and_errors() -> None:
    m = parse_wrk(WRK_OUTPUT)
    assert m.rps == pytest.approx(1382.39)
    assert m.p50_ms == pytest.approx(0.812)
    assert m.p99_ms == pytest.approx(1410.0)
    assert m.requests == 4160
    assert (m.non_2xx, m.socket_errors, m.errors) == (4, 6, 10)


def test_clean_wrk_output_has_no_errors() -> None:
    clean = "\n".join(
        line for line in WRK_OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    assert parse_wrk(clean).errors == 0


def test_wrk_output_without_a_percentile_is_refused() -> None:
    with pytest.raises(ValueError, match="99%"):
        parse_wrk(WRK_OUTPUT.replace("     99%    1.41s\n", ""))


def test_lua_script_posts_the_body_with_a_fresh_card_id() -> None:
    body = '{"instances": [[1.0, 2.0]], "card_id": "CARD"}'
    script = lua_script("/v1/models/fraud:predict", body)
    assert f"[==[{body}]==]" in script  # ']]' in a V1 body does not end the string
    assert 'wrk.format("POST", "/v1/models/fraud:predict"' in script
    assert 'string.gsub(body, "CARD"' in script
    with pytest.raises(ValueError):
        lua_script("/predict", '{"x": "]==]"}')


def test_pins_name_the_environment() -> None:
    a = VenvSpec("kserve", ("kserve==0.21.0", "xgboost-cpu==3.2.0"))
    b = VenvSpec("kserve", ("kserve==0.21.0", "xgboost-cpu==3.1.0"))
    assert a.digest() != b.digest()
    assert a.digest() == VenvSpec("kserve", a.requirements).digest()
    assert "(--no-deps)" in VenvSpec("m", ("mlserver==1.7.1",), ("mlserver-xgboost",)).pins()


def measured(rps: float, p50: float = 1.0, p99: float = 10.0, errors: int = 0) -> Measurement:
    return Measurement(rps, p50, p99, requests=1000, non_2xx=errors, socket_errors=0)


def runs_for(rates: dict[str, list[float]], clients: int = 64) -> list[rr.Run]:
    """One run per repetition per server at `clients`, throughput as given."""
    out: list[rr.Run] = []
    for server, per_rep in rates.items():
        for rep, rps in enumerate(per_rep, start=1):
            out.append(rr.Run(rep, len(out) + 1, server, clients, measured(rps), load1=0.5))
    return out


def test_ratios_pair_runs_of_the_same_repetition() -> None:
    runs = runs_for({rr.KPIGATE: [300, 200, 100], rr.KSERVE: [100, 100, 200]})
    ratios = rr.pair_ratios(runs, rr.KPIGATE, rr.KSERVE, 64, rr.throughput)
    assert ratios == [3.0, 2.0, 0.5]
    found = rr.spread(ratios)
    assert found is not None
    assert (found.low, found.median, found.high, found.count) == (0.5, 2.0, 3.0, 3)
    assert rr.pair_ratios(runs, rr.KPIGATE, rr.KSERVE, 1, rr.throughput) == []


def test_a_repetition_one_side_lacks_is_no_pair() -> None:
    runs = runs_for({rr.KPIGATE: [300, 200, 100], rr.KSERVE: [100, 100]})
    assert rr.pair_ratios(runs, rr.KPIGATE, rr.KSERVE, 64, rr.throughput) == [3.0, 2.0]


def check(results: list[rr.Check], target: str) -> rr.Check:
    return next(c for c in results if c.target == target)


def test_targets_are_judged_on_the_median_pair() -> None:
    runs = runs_for({rr.KPIGATE: [300, 140, 160], rr.KSERVE: [100, 100, 100]})
    results = rr.checks(runs, {})
    met = check(results, "64 clients: throughput >= 1.5x KServe V1")
    assert met.met and met.measured.startswith("1.60x")
    runs = runs_for({rr.KPIGATE: [300, 140, 145], rr.KSERVE: [100, 100, 100]})
    assert not check(rr.checks(runs, {}), "64 clients: throughput >= 1.5x KServe V1").met


def test_a_missing_peer_fails_its_targets_and_says_why() -> None:
    runs = runs_for({rr.KPIGATE: [300, 300, 300]})
    missing = {rr.MLSERVER: "environment not built: pip failed"}
    results = rr.checks(runs, missing)
    for clients in rr.CLIENTS:
        c = check(results, f"{rr.connections(clients)}: throughput >= 3x MLServer")
        assert not c.met
        assert "mlserver missing: environment not built" in c.measured
    unmeasured = check(results, "64 clients: throughput >= 1.5x KServe V1")
    assert not unmeasured.met and "kserve-v1 not measured" in unmeasured.measured


def test_p99_and_errors_are_targets_too() -> None:
    runs = [
        rr.Run(1, 1, rr.KPIGATE, 64, measured(500, p99=40.0), 0.5),
        rr.Run(2, 2, rr.KPIGATE, 64, measured(500, p99=70.0), 0.5),
        rr.Run(3, 3, rr.KPIGATE, 64, measured(500, p99=45.0, errors=2), 0.5),
    ]
    results = rr.checks(runs, {})
    assert check(results, "64 clients: kpigate p99 <= 50 ms").met  # median 45 ms
    errors = check(results, "every kpigate request answered 2xx")
    assert not errors.met
    assert errors.measured == "2 non-2xx answers, 0 socket errors in 3,000 requests"


def test_socket_errors_and_non_2xx_answers_are_reported_apart() -> None:
    timed_out = Measurement(500, 1.0, 10.0, requests=1000, non_2xx=0, socket_errors=32)
    refused = Measurement(500, 1.0, 10.0, requests=1000, non_2xx=3, socket_errors=0)
    runs = [
        rr.Run(1, 1, rr.KPIGATE, 16, timed_out, 0.5),
        rr.Run(2, 2, rr.KPIGATE, 16, refused, 0.5),
    ]
    errors = check(rr.checks(runs, {}), "every kpigate request answered 2xx")
    assert not errors.met
    assert errors.measured == "3 non-2xx answers, 32 socket errors in 2,000 requests"
    row = next(line for line in rr.configuration_table(runs, [rr.KPIGATE], {}) if "| 16 |" in line)
    assert "| 3 | 32 | 2 |" in row  # non-2xx, socket errors, runs
    table = rr.runs_table(runs)
    assert "| 0 | 32 | 0.50 |" in table[2] and "| 3 | 0 | 0.50 |" in table[3]


def test_the_report_warns_when_the_machine_was_busy() -> None:
    runs = runs_for({rr.KPIGATE: [300]})
    assert rr.load_note(runs, cores=2) is None
    busy = [rr.Run(1, 1, rr.KPIGATE, 64, measured(300), load1=11.5)]
    note = rr.load_note(busy, cores=2)
    assert note is not None and "11.5 on 2 cores" in note


def test_the_scoring_page_keeps_its_hand_written_section(tmp_path: Path) -> None:
    """bench/scoring.py rewrites docs/bench-scoring.md; the per-request-cost section, measured
    by bench/router_ab.py, survives it."""
    import scoring

    page = tmp_path / "bench-scoring.md"
    assert scoring.kept_section(page) == ""  # no page yet
    page.write_text(f"# old\n\nold numbers\n\n{scoring.KEPT_HEADING} (issue 12)\n\nA/B table\n")
    assert scoring.kept_section(page) == f"\n{scoring.KEPT_HEADING} (issue 12)\n\nA/B table\n"
    page.write_text("# old\n\nno such section\n")
    assert scoring.kept_section(page) == ""
