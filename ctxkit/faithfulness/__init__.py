"""ctxkit.faithfulness."""
