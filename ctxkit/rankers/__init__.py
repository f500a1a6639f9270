"""ctxkit.rankers."""
