"""Downstream evaluation of encoders: features, linear probe, kNN, fidelity, reports."""
