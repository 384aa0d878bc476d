"""The outcomes collector: KServe and Seldon payload logs into the prediction log."""
