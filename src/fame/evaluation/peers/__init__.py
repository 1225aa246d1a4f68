"""Peer tools run beside fame on the same split, each in its own virtual environment."""
