"""Trivial stock Flower app for the deployment tests and the overhead benchmark."""
