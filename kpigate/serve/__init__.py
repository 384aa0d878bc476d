"""The model router: weighted, sticky canary/shadow serving with a prediction log and metrics."""
