"""ctxkit.retrievers."""
