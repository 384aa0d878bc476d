"""The fraud-detection case study: transaction schema, synthetic data and the two models."""
