"""Composes designs, runs workers, measures and reports."""
