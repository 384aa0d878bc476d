"""Anytime-valid evidence on a stratified difference: e-values and confidence bounds.

Each window w gives an improvement estimate u_w (candidate minus baseline, signed so that
positive is better) with variance v_w. Windows are combined by inverse-variance weights,
so the running sums are A = sum(u_w / v_w) and I = sum(1 / v_w) (the information). Under a
true improvement u, sum((u_w - u) / v_w) is a Gaussian martingale with variance I, whatever the
traffic split or any drift both arms share inside a window: that is the point of stratifying.

Two one-sided questions are asked at every look, each by a test supermartingale (an
e-process), so peeking after every window of every stage never inflates its error rate:

* harm: H0 "the candidate is not worse than -delta_r" is tested by a half-normal mixture of
  likelihood ratios (Robbins' normal mixture, one-sided). Large harm is caught within a look
  or two; rejection means ROLLBACK. Its error rate is the false-rollback budget alpha.
* non-inferiority: H0 "the candidate is worse by at least the margin delta" against the
  alternative "it is as good as the baseline" by the likelihood ratio of those two points
  (Wald's SPRT). Rejection certifies the KPI for promotion; its error rate is the
  false-promotion budget.

Inverting the two tests gives the confidence bounds reported with each decision, so a
verdict always agrees with its interval: fail iff upper < -delta_r, pass iff lower > -delta.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

_LOG2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def log_normal_cdf(z: float) -> float:
    """log Phi(z), accurate in the far left tail where Phi underflows."""
    if z > -30.0:
        return math.log(0.5 * math.erfc(-z / _SQRT2))
    # Mills-ratio expansion: Phi(z) ~ phi(z)/|z| (1 - 1/z^2 + 3/z^4).
    z2 = z * z
    return -0.5 * z2 - _LOG_SQRT_2PI - math.log(-z) + math.log1p(-1.0 / z2 + 3.0 / (z2 * z2))


def _mills_term(z: float) -> float:
    """phi(z) / Phi(z)."""
    return math.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_normal_cdf(z))


def harm_log_evalue(s: float, info: float, rho: float) -> float:
    """log of the one-sided normal-mixture e-value for a drift sum s after information `info`.

    M = integral over lambda >= 0 of exp(lambda s - lambda^2 info / 2), lambda ~ half-N(0, 1/rho)
      = 2 sqrt(rho / (info + rho)) exp(s^2 / (2 (info + rho))) Phi(s / sqrt(info + rho)).
    """
    total = info + rho
    z = s / math.sqrt(total)
    return _LOG2 + 0.5 * math.log(rho / total) + 0.5 * z * z + log_normal_cdf(z)


@lru_cache(maxsize=4096)
def _boundary_z(r: float) -> float:
    """The z solving z^2/2 + log Phi(z) = r (increasing in z, so the root is unique)."""
    z = math.sqrt(2.0 * r) if r > 0.5 else 1.0
    for _ in range(50):
        h = 0.5 * z * z + log_normal_cdf(z) - r
        step = h / (z + _mills_term(z))
        z -= step
        if abs(step) < 1e-10:
            break
    return z


def harm_boundary(info: float, rho: float, log_threshold: float) -> float:
    """The drift sum s at which the harm e-value reaches exp(log_threshold)."""
    total = info + rho
    r = log_threshold - _LOG2 - 0.5 * math.log(rho / total)
    # Rounding r lets the cache serve the many windows that share an information level.
    return _boundary_z(round(r, 9)) * math.sqrt(total)


def noninferiority_log_evalue(weighted: float, info: float, delta: float, theta: float) -> float:
    """log likelihood ratio of improvement -delta + theta against -delta (theta > 0)."""
    return theta * (weighted + delta * info) - 0.5 * theta * theta * info


def upper_bound(weighted: float, info: float, rho: float, log_threshold: float) -> float:
    """Anytime-valid upper confidence bound on the improvement (from the harm test)."""
    return (weighted + harm_boundary(info, rho, log_threshold)) / info


def lower_bound(weighted: float, info: float, theta: float, log_threshold: float) -> float:
    """Anytime-valid lower confidence bound on the improvement (from the SPRT family)."""
    return weighted / info - log_threshold / (theta * info) - 0.5 * theta


@lru_cache(maxsize=256)
def normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(p)


def normal_sf(z: float) -> float:
    """P(Z > z)."""
    return 0.5 * math.erfc(z / _SQRT2)
