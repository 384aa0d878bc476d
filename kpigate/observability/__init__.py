"""Observability assets generated as code: the Grafana dashboard for rollouts."""
