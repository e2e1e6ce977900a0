"""Circuit discovery methods, registered by name; each returns one score per edge (higher = more
important), and circuits are cut from scores by ``circuits.py``."""

from circuitflow.discovery.eap import eap_scores

METHODS = {"eap": eap_scores}

__all__ = ["METHODS", "eap_scores"]
