"""Helpers that CI and `make` run beside the service: the dependency audit."""
