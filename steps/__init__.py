"""Pipeline steps, each a small containerized entry point (installed as kpigate.steps)."""
