"""Routers; ``uba.api.app`` assembles them in one place."""
