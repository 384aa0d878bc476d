"""Metrics sources: where soak-and-collect reads per-window KPI counts (one module each)."""
