"""Baselines flashsale is measured against, each a faithful implementation of another design."""
