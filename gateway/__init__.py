"""Clearance Gateway: an authenticating, field-masking reverse proxy for legacy customer systems."""

__version__ = "0.1.0"
