"""Outcome store: served confidences joined with user feedback; export as training data."""
