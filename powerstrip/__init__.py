"""Powerstrip: a Docker Engine API proxy with adapter hooks."""

__version__ = "0.1.0"
