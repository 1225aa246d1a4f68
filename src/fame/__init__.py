"""fame: Failure-Aware Mixture-of-Experts for message-level log anomaly detection."""

from __future__ import annotations

__version__ = "0.1.0"
