"""ctxkit.integrations."""
