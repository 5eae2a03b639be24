"""Utilities: metrics and helpers for training and evaluation."""
