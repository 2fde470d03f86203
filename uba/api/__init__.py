"""FastAPI inference service: ``create_app()`` builds it, ``uba-api`` serves it."""
