"""Metrics sources on real parts: the router's /metrics and a real Prometheus scraping it."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import promql_parser
import pytest

from kpigate.policy import Kpi, KpiType
from kpigate.sources import catalogue
from kpigate.sources import prometheus as prom
from kpigate.sources.base import SourceError
from kpigate.sources.counts import SERIES, WindowCounts
from kpigate.sources.prometheus import PrometheusSource
from kpigate.sources.router import RouterScrapeSource
from tests.prometheus_fixtures import PrometheusServer
from tests.serve_fixtures import FixedModel, RouterServer, constant, metric_value, transactions

KPIS = (
    Kpi(name="recall"),
    Kpi(name="precision"),
    Kpi(name="fpr", direction="lower"),
    Kpi(name="chargeback_rate", direction="lower"),
    Kpi(name="approval_rate"),
    Kpi(name="error_rate", direction="lower"),
    Kpi(name="latency_p95", type=KpiType.QUANTILE, quantile=0.95, direction="lower", margin=10),
    Kpi(name="auc", type=KpiType.AUC),
    Kpi(name="recall_eu", metric="recall", segment="region=eu"),
    Kpi(name="fpr_gap", type=KpiType.GAP, metric="fpr", direction="lower",
        gap_segments=("amount_band=mid", "amount_band=low")),
)  # fmt: skip


def read_all(counts: WindowCounts) -> dict[str, Any]:
    return {k.name: catalogue.read(k, k.name, counts) for k in KPIS}


def drive(router: RouterServer, n: int = 400, seed: int = 1) -> list[dict[str, Any]]:
    """n predictions, one card each; every 4th labeled fraud. Returns the served answers."""
    served = []
    with router.client() as client:
        for i, tx in enumerate(transactions(n, seed)):
            tx["card_id"] = f"card-{seed}-{i}"
            answer = client.post("/predict", json=tx).json()
            answer["label"] = 1 if i % 4 == 0 else 0
            answer["region"] = tx["region"]
            served.append(answer)
        labels = [{"request_id": a["request_id"], "label": a["label"]} for a in served]
        assert client.post("/feedback", json=labels).json()["joined"] == n
    return served


def expected_confusion(
    served: list[dict[str, Any]], arm: str, region: str | None = None
) -> Counter[str]:
    out: Counter[str] = Counter()
    for a in served:
        if a["arm"] != arm or (region and a["region"] != region):
            continue
        declined = a["decision"] == "decline"
        out[("tp" if a["label"] else "fp") if declined else ("fn" if a["label"] else "tn")] += 1
    return out


@pytest.fixture
def two_arm_router(start_router: Any) -> RouterServer:
    # Baseline approves everything (score 0.1), candidate declines everything (0.9): each
    # arm's confusion counts are then known exactly from the labels.
    models = {
        "champion": FixedModel("1", score=constant(0.1)),
        "candidate": FixedModel("2", score=constant(0.9)),
    }
    router: RouterServer = start_router(models, initial_weight=50.0)
    return router


def test_router_source_counts_equal_what_was_served_and_labeled(
    two_arm_router: RouterServer,
) -> None:
    source = RouterScrapeSource(two_arm_router.url)
    source.mark()
    served = drive(two_arm_router)
    time.sleep(0.5)  # the prediction log writer joins labels asynchronously
    kpis = read_all(source.collect().counts)
    for arm in ("baseline", "candidate"):
        c = expected_confusion(served, arm)
        assert c and sum(c.values()) > 100
        assert kpis["recall"][arm] == {"successes": c["tp"], "trials": c["tp"] + c["fn"]} or (
            c["tp"] + c["fn"] == 0 and kpis["recall"][arm] is None
        )
        assert kpis["fpr"][arm] == {"successes": c["fp"], "trials": c["fp"] + c["tn"]}
        approved = c["tn"] + c["fn"]
        assert kpis["approval_rate"][arm] == {"successes": approved, "trials": sum(c.values())}
        assert kpis["error_rate"][arm] == {"successes": 0, "trials": sum(c.values())}
        assert kpis["latency_p95"][arm]["buckets"]["+Inf"] == sum(c.values())
        eu = expected_confusion(served, arm, "eu")
        assert kpis["recall_eu"][arm] == {"successes": eu["tp"], "trials": eu["tp"] + eu["fn"]}
        assert (
            kpis["fpr_gap"][arm]["a"]["trials"] + kpis["fpr_gap"][arm]["b"]["trials"]
            <= c["fp"] + c["tn"]
        )
    assert kpis["recall"]["candidate"]["successes"] == kpis["recall"]["candidate"]["trials"]
    assert kpis["recall"]["baseline"]["successes"] == 0
    auc = kpis["auc"]["candidate"]
    assert auc["positives"]["+Inf"] > 0 and auc["negatives"]["+Inf"] > 0
    # The next window starts where this one ended: nothing new, nothing counted twice.
    assert read_all(source.collect().counts)["recall"]["candidate"] is None


def test_router_source_down_is_a_missing_window_not_an_error(two_arm_router: RouterServer) -> None:
    source = RouterScrapeSource("http://127.0.0.1:9")  # nothing listens there
    source.mark()
    with pytest.raises(SourceError, match="cannot scrape"):
        source.collect()


def query_total(prometheus: PrometheusServer, metric: str) -> float:
    rows = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": f"sum({metric})"}).json()
    result = rows["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def scraped_up_to_now(prometheus: PrometheusServer, router: RouterServer, matchers: str) -> None:
    """Wait until Prometheus holds the router's current value of every series we read."""
    time.sleep(0.5)  # let the prediction log writer finish joining labels
    own = httpx.get(f"{router.url}/metrics").text
    for series in SERIES:
        value = metric_value(own, series.metric)
        prometheus.wait_for(  # a counter never incremented has no series at all
            f"sum({series.metric}{{{matchers}}})",
            lambda r, v=value: (float(r[0]["value"][1]) if r else 0.0) == v,
        )


def test_prometheus_counts_equal_the_routers_own(
    prometheus: PrometheusServer, two_arm_router: RouterServer
) -> None:
    target = two_arm_router.url.removeprefix("http://")
    prometheus.scrape(target)
    prometheus.wait_for(f'up{{instance="{target}"}}', lambda r: bool(r) and r[0]["value"][1] == "1")
    matchers = f'instance="{target}"'
    delta = PrometheusSource(prometheus.url, matchers=matchers, mode="delta")
    increase = PrometheusSource(prometheus.url, matchers=matchers, mode="increase")
    direct = RouterScrapeSource(two_arm_router.url)
    for source in (delta, increase, direct):
        source.mark()
    drive(two_arm_router, n=300, seed=2)
    scraped_up_to_now(prometheus, two_arm_router, matchers)
    from_router = read_all(direct.collect().counts)
    from_prometheus = read_all(delta.collect().counts)
    assert from_prometheus == from_router

    # increase() cannot see the jump of a series born inside its range, so it is checked on a
    # second window over series that already exist; it extrapolates counts to the window's
    # edges, so counts scale while rates stay.
    increase.mark()
    direct.mark()
    time.sleep(1.5)  # so the range holds samples from before this window's traffic
    drive(two_arm_router, n=200, seed=3)
    scraped_up_to_now(prometheus, two_arm_router, matchers)
    exact_window = read_all(direct.collect().counts)
    approx = read_all(increase.collect().counts)
    for kpi in ("fpr", "approval_rate"):
        for arm in ("baseline", "candidate"):
            exact, scaled = exact_window[kpi][arm], approx[kpi][arm]
            assert scaled["successes"] / scaled["trials"] == pytest.approx(
                exact["successes"] / exact["trials"], rel=1e-6
            )
            assert scaled["trials"] > 0


def test_prometheus_lagging_or_down(prometheus: PrometheusServer, start_router: Any) -> None:
    router = start_router()
    target = router.url.removeprefix("http://")
    prometheus.scrape(target)
    prometheus.wait_for(f'up{{instance="{target}"}}', lambda r: bool(r) and r[0]["value"][1] == "1")
    matchers = f'instance="{target}"'
    source = PrometheusSource(prometheus.url, matchers=matchers, max_staleness_s=60)
    source.mark()
    fresh = source.collect()
    assert not fresh.stale, fresh.note
    # Samples are always some scrape interval old; a limit below that marks the window stale.
    strict = PrometheusSource(prometheus.url, matchers=matchers, max_staleness_s=0.001)
    strict.mark()
    lagging = strict.collect()
    assert lagging.stale and "> max_staleness" in lagging.note
    # Prometheus stops scraping the router: its series go stale and the window is missing.
    prometheus.scrape()
    prometheus.wait_for(f"up{{{matchers}}}", lambda r: not r)
    gone = source.collect()
    assert gone.stale and gone.note == "no router samples in Prometheus"
    down = PrometheusSource("http://127.0.0.1:9")
    down.mark()
    with pytest.raises(SourceError):
        down.collect()


@pytest.mark.parametrize(
    "template",
    [
        prom.INCREASE.format(
            by="arm, outcome", metric="kpigate_outcomes_total", selector='{job="x"}', seconds=60
        ),
        prom.RAW.format(by="arm, le", metric="kpigate_labeled_score_bucket", selector=""),
        prom.LAG.format(selector='{job="x"}'),
        prom.LATENCY_P95.format(selector=""),
        prom.RECALL.format(selector=""),
    ],
)
def test_promql_templates_parse(template: str) -> None:
    assert promql_parser.parse(template) is not None


@pytest.mark.parametrize(
    "policy_file",
    ["manifests/policy.yaml", "kpigate/examples/policy.yaml", "kpigate/examples/demo-policy.yaml"],
)
def test_every_shipped_policy_can_be_read_from_the_router(policy_file: str) -> None:
    from pathlib import Path

    from kpigate.policy import load_policy

    root = Path(__file__).resolve().parent.parent
    for kpi in load_policy(root / policy_file).kpis:
        catalogue.check(kpi)  # raises CatalogueError naming the KPI otherwise
