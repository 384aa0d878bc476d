"""The relay: MLflow registry webhooks in, verified and deduplicated, rollouts out."""
