"""Optical flow: the estimators, per-pair statistics, the colour wheel."""
