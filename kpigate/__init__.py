"""kpigate: progressive delivery for ML models, gated by quality KPIs."""

__version__ = "0.1.0"
