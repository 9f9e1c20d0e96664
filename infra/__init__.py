"""Local infrastructure for development and CI: the single-node Kafka broker (broker.py)."""
