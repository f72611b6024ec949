"""Shipping: the MLflow registry and its promotion gate, serving the registered summarizer."""
