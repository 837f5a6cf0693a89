"""Measuring a model: metrics, thresholds and plots."""
