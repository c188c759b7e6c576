"""Helpers for tests and trials only: tiny random weights in the official layout."""
