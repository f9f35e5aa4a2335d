"""Thin cogs: each parses an interaction and hands plain values to the services in ``bot``."""
