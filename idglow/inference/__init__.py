"""Batch inference at scale: every model stage as a Ray Data pipeline over work items (engine)."""
