"""A proposer that proposes no failure domain: one global model (the paper's ablation, IV).

Every EventID stays in ``UNIVERSAL_NORMAL``, so certification keeps no pure-anomaly or mixed
expert domain, no gate or selector is trained and the single ``UNIVERSAL_NORMAL`` expert
decides every line: the "single global model" rows of the paper's Table I.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fame.partition.base import UNIVERSAL_NORMAL, Partition

if TYPE_CHECKING:
    from fame.sampling import KShotSample


class SingleDomainProposer:
    """Puts every EventID in ``UNIVERSAL_NORMAL`` (no failure domains)."""

    name = "single"

    def propose(self, sample: KShotSample) -> Partition:
        """One domain holding every EventID of the sample.

        Args:
            sample: The K-shot sample; only its EventIDs are used.

        Returns:
            A partition whose only domain is ``UNIVERSAL_NORMAL``.
        """
        partition = Partition(
            domains={UNIVERSAL_NORMAL: sorted(sample.events)},
            proposer=self.name,
            details={"note": "single global model: no failure domains proposed"},
        )
        return partition.normalised(sample.events)
