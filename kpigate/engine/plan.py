"""What the gate works with: the compiled plan, a rollout's state, and the decisions it returns."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from kpigate.engine import sequential as seq
from kpigate.engine.control import ControlLimits
from kpigate.engine.evidence import ArmData, Contrast
from kpigate.policy import Action, Direction, Kpi, KpiType, Policy, Stage

if TYPE_CHECKING:  # numpy only for the forecast's arrays; the gate itself never imports it
    import numpy as np
    from numpy.typing import NDArray


class Decision(StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Cause(StrEnum):
    """Why a decision (or a KPI's verdict) is what it is: the fixed set reports, notifications,
    the audit trail and exit statuses read, instead of parsing reason strings."""

    HARM = "harm"  # a KPI failed: rollback or hold on evidence of harm
    CERTIFIED = "certified"  # promote: every gating KPI shown non-inferior
    NO_HARM = "no_harm"  # promote at a `promote_when: no_harm` stage
    SOAKING = "soaking"  # the stage's soak is not over: a routine hold
    EVIDENCE = "evidence"  # judged, but not yet shown non-inferior: more samples needed
    BURN_IN = "burn_in"  # fewer samples than min_samples
    WAITING_FOR_LABELS = "waiting_for_labels"  # no cohort of this stage has matured yet
    NO_DATA = "no_data"  # an arm sent nothing, or the data cannot be compared
    STALE = "stale"  # the collector marked the evidence too old
    TIMEOUT = "timeout"  # no decision within max_holds: rollback or suspend by policy
    OPERATOR = "operator"  # an operator's action (abort, promote, rejection)
    CALIBRATION = "calibration"  # an A/A window before the rollout: variance only, no look
    ENDED = "ended"  # the rollout had already ended


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """One KPI in one segment, with its share of the error budgets worked out once."""

    key: str  # the report's key; the window's data are under data_key
    kpi: Kpi
    sign: float  # +1 when higher is better: improvement = sign * (candidate - baseline)
    log_harm_threshold: float
    log_noninferiority_threshold: float
    harm_z: float  # for scope `window`
    noninferiority_z: float
    data_key: str = ""
    contrast: Contrast = "signed"  # gap KPIs on magnitude: widen or reverse (evidence.py)

    @property
    def data(self) -> str:
        return self.data_key or self.key


@dataclass(frozen=True)  # no slots: kpi_types is cached in the instance's __dict__
class GatePlan:
    """A policy compiled for judging: hypotheses and their Bonferroni-split budgets."""

    policy: Policy
    hypotheses: tuple[Hypothesis, ...]

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.policy.stages

    @cached_property
    def kpi_types(self) -> Mapping[str, KpiType]:
        """Data key -> KPI type, for readers of window data (read once per window)."""
        return {h.data: h.kpi.type for h in self.hypotheses}


def compile_plan(policy: Policy) -> GatePlan:
    """Split alpha over the rollback hypotheses and the promotion budget over gating ones.

    e-values combine by Bonferroni without any dependence assumption: rejecting when
    e >= K / alpha keeps the family's error at alpha over all looks. Holds and alerts do not
    spend the false-rollback budget; they get their own family at the same alpha.
    """
    keyed = [
        (key, data_key, kpi, contrast)
        for kpi in policy.kpis
        for data_key in kpi.hypotheses()
        for key, contrast in _contrasts(kpi, data_key)
    ]
    n_rollback = sum(1 for *_, k, _c in keyed if k.action is Action.ROLLBACK) or 1
    n_other = sum(1 for *_, k, _c in keyed if k.action is not Action.ROLLBACK) or 1
    n_gating = sum(1 for *_, k, _c in keyed if k.is_gating) or 1
    hypotheses = []
    for key, data_key, kpi, contrast in keyed:
        harm_alpha = policy.alpha / (n_rollback if kpi.action is Action.ROLLBACK else n_other)
        promo_alpha = policy.promotion_alpha / n_gating
        hypotheses.append(
            Hypothesis(
                key=key,
                kpi=kpi,
                sign=1.0 if kpi.direction is Direction.HIGHER else -1.0,
                log_harm_threshold=math.log(1.0 / harm_alpha),
                log_noninferiority_threshold=math.log(1.0 / promo_alpha),
                harm_z=seq.normal_quantile(1.0 - harm_alpha),
                noninferiority_z=seq.normal_quantile(1.0 - promo_alpha),
                data_key=data_key,
                contrast=contrast,
            )
        )
    return GatePlan(policy=policy, hypotheses=tuple(hypotheses))


def _contrasts(kpi: Kpi, data_key: str) -> list[tuple[str, Contrast]]:
    """A gap on magnitude is two hypotheses (it widens; it reverses), each with its budget."""
    if kpi.type is KpiType.GAP and not kpi.signed:
        return [(data_key, "widen"), (f"{data_key}[reversed]", "reverse")]
    return [(data_key, "signed")]


@dataclass(frozen=True, slots=True)
class Scales:
    """The sizes a KPI's two sequential tests use, from its margin (KPI units)."""

    scale: float  # harm size caught fastest: the mixture's spread
    rho: float  # 1 / scale^2
    theta: float  # the non-inferiority alternative
    delta_r: float  # harm beyond this fails (0: any harm)


def scales_of(kpi: Kpi, policy: Policy, margin: float) -> Scales | None:
    """None when there is nothing to test with: a zero margin and no `detect`."""
    scale = kpi.detect if kpi.detect is not None else policy.harm_scale * margin
    if not scale > 0:
        return None
    return Scales(
        scale=scale,
        rho=1.0 / (scale * scale),
        theta=margin if margin > 0 else 0.5 * scale,
        delta_r=margin if kpi.fail_beyond_margin else 0.0,
    )


@dataclass(frozen=True, slots=True)
class Spread:
    """How much the per-window differences scatter beyond their model variances.

    Running sums over earlier windows of the difference u_w weighted by its model variance
    (w_w = 1 / v_w); from them the DerSimonian-Laird moment estimate of a between-window
    variance component tau^2: Q = sum w (u - mean)^2 has expectation (k - 1) + tau^2 C when
    every window's difference varies by v_w + tau^2 around a common mean.
    """

    windows: int = 0
    w: float = 0.0
    w2: float = 0.0
    wu: float = 0.0
    wu2: float = 0.0

    def add(self, difference: float, model_variance: float) -> Spread:
        w = 1.0 / model_variance
        return Spread(
            self.windows + 1,
            self.w + w,
            self.w2 + w * w,
            self.wu + w * difference,
            self.wu2 + w * difference * difference,
        )

    @property
    def q(self) -> float:
        """Cochran's Q: the weighted scatter around this group's own weighted mean."""
        return self.wu2 - self.wu * self.wu / self.w if self.windows >= 2 else 0.0

    @property
    def c(self) -> float:
        """The coefficient of tau^2 in E[Q]: sum w - sum w^2 / sum w."""
        return self.w - self.w2 / self.w if self.windows >= 2 else 0.0

    @property
    def df(self) -> int:
        return max(self.windows - 1, 0)

    def tau2(self) -> float:
        """This group's component alone (pooled_tau2 of one group)."""
        return pooled_tau2((self,))


def pooled_tau2(groups: Sequence[Spread]) -> float:
    """The between-window component from several groups of windows, each around its own mean.

    Calibration windows (two halves of the baseline before the rollout, mean 0) and rollout
    windows (candidate vs baseline, whose mean is the real difference) scatter by the same
    tau^2 but around different means, so each keeps its own: Q = sum of the groups' Q, on
    sum (k_g - 1) degrees of freedom, with C = sum C_g; tau^2 = max(0, (Q - df) / C). A real
    difference in the rollout then moves only its own group's mean, never tau^2. With df
    degrees of freedom the plug-in understates the tails as a normal quantile understates
    Student's t, so it is scaled by 1 + 2 / df (the t-variance factor's shape), which fades as
    windows come; fewer than one degree of freedom estimates nothing (0).
    """
    df = sum(g.df for g in groups)
    c = sum(g.c for g in groups)
    if df < 1 or not c > 0:
        return 0.0
    q = sum(g.q for g in groups)
    estimate = max(0.0, (q - df) / c)
    return estimate * (1.0 + 2.0 / df)


@dataclass(slots=True)
class SpreadArrays:
    """Spread's running sums for many simulated rollouts at once (the forecast, forecast_sim.py):
    each field an array of one shape, one entry per rollout (and KPI); `add` takes a window where
    `mask` is true, exactly as Spread.add does, and pooled_tau2_arrays is pooled_tau2 entry by
    entry (tests/test_forecast.py checks the two agree)."""

    windows: NDArray[np.float64]
    w: NDArray[np.float64]
    w2: NDArray[np.float64]
    wu: NDArray[np.float64]
    wu2: NDArray[np.float64]

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> SpreadArrays:
        import numpy as np

        return cls(*(np.zeros(shape) for _ in range(5)))

    def add(
        self,
        difference: NDArray[np.float64],
        model_variance: NDArray[np.float64],
        mask: NDArray[np.bool_],
    ) -> None:
        import numpy as np

        w = np.divide(1.0, model_variance, out=np.zeros_like(self.w), where=mask)
        self.windows += mask
        self.w += w
        self.w2 += w * w
        self.wu += w * difference
        self.wu2 += w * difference * difference

    def q_c_df(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Spread.q, Spread.c and Spread.df, entry by entry."""
        import numpy as np

        two = (self.windows >= 2) & (self.w > 0)
        safe = np.where(two, self.w, 1.0)
        q = np.where(two, self.wu2 - self.wu * self.wu / safe, 0.0)
        c = np.where(two, self.w - self.w2 / safe, 0.0)
        return q, c, np.maximum(self.windows - 1, 0)


def pooled_tau2_arrays(groups: Sequence[SpreadArrays]) -> NDArray[np.float64]:
    """pooled_tau2 entry by entry, over SpreadArrays of one shape."""
    import numpy as np

    parts = [g.q_c_df() for g in groups]
    q = sum((p[0] for p in parts), np.zeros_like(groups[0].w))
    c = sum((p[1] for p in parts), np.zeros_like(groups[0].w))
    df = sum((p[2] for p in parts), np.zeros_like(groups[0].w))
    valid = (df >= 1) & (c > 0)
    safe_c, safe_df = np.where(valid, c, 1.0), np.where(valid, df, 1.0)
    estimate = np.maximum(0.0, (q - safe_df) / safe_c) * (1.0 + 2.0 / safe_df)
    return np.where(valid, estimate, 0.0)


@dataclass(frozen=True, slots=True)
class KpiState:
    info: float = 0.0  # sum of 1 / v_w
    weighted: float = 0.0  # sum of u_w / v_w
    candidate: ArmData | None = None  # all windows summed
    baseline: ArmData | None = None
    history: tuple[float, ...] = ()  # the baseline's first per-window values (sigma rule)
    ewma: float | None = None
    looks: int = 0  # windows that added evidence
    spread: Spread = Spread()
    # A/A calibration (baseline halves before the rollout): feeds tau^2 only, never info or
    # weighted; its own reference (both halves of earlier calibration windows) sets the
    # variance of each calibration difference as `candidate` + `baseline` do for the rollout.
    calibration: Spread = Spread()
    calibration_reference: ArmData | None = None
    # Rate KPIs whose source gives design effects (evidence.Rate.deff): the one the evidence
    # is scaled by at the latest look, and the candidate's latest (for the next look).
    deff: float = 1.0
    candidate_deff: float | None = None


@dataclass(frozen=True, slots=True)
class KpiReport:
    key: str
    category: str
    verdict: Verdict
    triggers: str  # the action this verdict set off: rollback, hold, alert or none
    reason: str
    cause: Cause = Cause.EVIDENCE
    margin: float | None = None
    estimate: float | None = None  # candidate - baseline, stratified over windows
    ci: tuple[float, float] | None = None
    candidate: float | None = None
    baseline: float | None = None
    samples: tuple[float, float] = (0.0, 0.0)
    evidence: Mapping[str, float] = field(default_factory=dict)
    control: ControlLimits | None = None
    # A KPI short of non-inferiority: candidate samples it still needs if its estimate held
    # (inf: never at that estimate), and about how long they take at the current rate.
    needs_samples: float | None = None
    eta_seconds: float | None = None
    # Calibration windows the between-window component rests on (besides the rollout's own).
    calibration_windows: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": self.category,
            "verdict": self.verdict.value,
            "action": self.triggers,
            "cause": self.cause.value,
            "reason": self.reason,
            "estimate": _round(self.estimate),
            "ci": [_round(self.ci[0]), _round(self.ci[1])] if self.ci else None,
            "margin": _round(self.margin),
            "candidate": _round(self.candidate),
            "baseline": _round(self.baseline),
            "samples": {"candidate": self.samples[0], "baseline": self.samples[1]},
            "evidence": {k: _round(v) for k, v in self.evidence.items()},
        }
        if self.control is not None:
            out["control"] = {k: _round(getattr(self.control, k)) for k in _CONTROL_FIELDS}
        if self.needs_samples is not None:
            finite = math.isfinite(self.needs_samples)
            out["needs_samples"] = math.ceil(self.needs_samples) if finite else None
            out["eta_seconds"] = None if self.eta_seconds is None else round(self.eta_seconds)
        if self.calibration_windows:
            out["calibration_windows"] = self.calibration_windows
        return out


_CONTROL_FIELDS = ("center", "lcl", "ucl", "value", "ewma", "ewma_lcl", "ewma_ucl")


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.6g}")


@dataclass(frozen=True, slots=True)
class GateDecision:
    window: int
    stage: float
    decision: Decision
    reasons: tuple[str, ...]
    kpis: Mapping[str, KpiReport]
    look: int  # evaluation number within the stage
    holds: int  # inconclusive looks after the soak, this stage
    suspend: bool = False  # HOLD that asks an operator to resume (policy on_max_holds)
    final: bool = False  # rolled back, or promoted at the last stage
    alerts: tuple[str, ...] = ()
    cause: Cause = Cause.EVIDENCE
    # An A/A calibration window (before the rollout): it fed the variance and decided nothing,
    # so whoever takes "the latest decision" skips it (decision HOLD, look 0, cause calibration).
    calibration: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "window": self.window,
            "stage": self.stage,
            "decision": self.decision.value,
            "cause": self.cause.value,
            "reasons": list(self.reasons),
            "look": self.look,
            "holds": self.holds,
            "suspend": self.suspend,
            "final": self.final,
            "alerts": list(self.alerts),
            "kpis": {key: report.as_dict() for key, report in self.kpis.items()},
        }
        if self.calibration:
            out["calibration"] = True
        return out


@dataclass(frozen=True, slots=True)
class RolloutState:
    windows: int = 0
    stage: float | None = None
    look: int = 0
    holds: int = 0
    ended: GateDecision | None = None
    kpis: Mapping[str, KpiState] = field(default_factory=dict)
    last_cohort: int | None = None  # the newest cohort judged; older ones are never revisited
    cohort_stages: frozenset[float] = frozenset()  # stages with a judged cohort of their own
    calibration_windows: int = 0  # A/A calibration records taken in (they precede window 1)
