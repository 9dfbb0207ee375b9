"""The bundled demo: a legacy customer system with realistic data (``data``, ``upstream``).

Nothing is imported here, so ``python -m gateway.demo.upstream`` runs cleanly and
importing the package costs nothing.
"""
