"""ctxkit.llm."""
