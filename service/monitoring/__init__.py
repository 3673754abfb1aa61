"""Calibration monitoring: Prometheus metrics, the outcome-store monitor, confidence drift."""
