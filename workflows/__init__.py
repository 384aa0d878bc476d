"""Hera workflow definitions (installed as kpigate.workflows)."""
