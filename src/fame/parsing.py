"""Template parsing with Drain3 (paper III-A).

Offline, every content line is fed to Drain (similarity threshold 0.5, tree depth 4, as in the
paper) after masking numbers, hex values, IP addresses and paths, and each line gets the
EventID of its cluster. Online, lines are matched against the frozen templates without ever
creating or changing one: a line whose template was not seen offline gets no EventID.

Persistence is plain JSON written by this module. Drain3's own ``TemplateMiner`` persistence
uses jsonpickle, which can construct arbitrary objects (and so run code) while loading; a
detector bundle must never execute anything it reads.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from drain3.drain import Drain, LogCluster
from drain3.masking import LogMasker, MaskingInstruction

from fame.errors import BundleError, ConfigError

__all__ = [
    "DEFAULT_MASKING",
    "MASK_HEX",
    "MASK_IP",
    "MASK_NUM",
    "MASK_PATH",
    "PARSER_JSON_TAG",
    "Template",
    "TemplateParser",
]

logger = logging.getLogger(__name__)

#: Tag written by :meth:`TemplateParser.to_json` and checked by :meth:`TemplateParser.from_json`.
PARSER_JSON_TAG = "fame.template_parser/1"

# Each mask only fires on a whole token part: it must be preceded and followed by a
# non-alphanumeric character or the line's edge, so "R02" or "eth1" stay untouched.
_START = r"((?<=[^A-Za-z0-9])|^)"
_END = r"((?=[^A-Za-z0-9])|$)"

#: IPv4 address -> ``<IP>``.
MASK_IP = _START + r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})" + _END
#: Hexadecimal number with a ``0x`` prefix -> ``<HEX>``.
MASK_HEX = _START + r"(0x[0-9a-fA-F]+)" + _END
#: Absolute path of at least two components (``/a/b``, ``/p/gb2/stella/RAPTOR/2183/raptor``)
#: -> ``<PATH>``. One component (``/dev``) is too often a plain word to mask.
MASK_PATH = _START + r"((?:/[\w.\-]+){2,}/?)" + _END
#: Decimal integer, optionally signed -> ``<NUM>``.
MASK_NUM = _START + r"([\-+]?\d+)" + _END

#: Default masking, in order: IP and hex before numbers (otherwise ``10.0.0.1`` would become
#: ``<NUM>.<NUM>.<NUM>.<NUM>`` and ``0x1f`` ``<NUM>x1f``), paths before numbers so that a
#: path keeps one mask instead of numbers inside it. Each entry is ``(regex, mask name)``.
DEFAULT_MASKING: tuple[tuple[str, str], ...] = (
    (MASK_IP, "IP"),
    (MASK_HEX, "HEX"),
    (MASK_PATH, "PATH"),
    (MASK_NUM, "NUM"),
)

_MASK_PREFIX = "<"
_MASK_SUFFIX = ">"


@dataclass(frozen=True)
class Template:
    """One Drain template.

    Attributes:
        event_id: ``"E<drain cluster id>"``.
        template: Template text; ``<*>`` marks Drain wildcards, ``<NUM>`` etc. masked values.
        size: Number of offline lines that Drain put in this template while learning.
    """

    event_id: str
    template: str
    size: int


def _event_id(cluster_id: int) -> str:
    return f"E{cluster_id}"


class TemplateParser:
    """Drain3 template mining (offline) and frozen template matching (online), paper III-A.

    Attributes:
        sim_th: Drain similarity threshold.
        depth: Drain prefix-tree depth.
        max_children: Most children of a prefix-tree node.
        cache_size: Entries of the match cache.
    """

    def __init__(
        self,
        *,
        sim_th: float = 0.5,
        depth: int = 4,
        max_children: int = 100,
        masking: Sequence[tuple[str, str]] | None = None,
        cache_size: int = 65536,
    ) -> None:
        """Create an empty parser.

        Args:
            sim_th: Drain similarity threshold in [0, 1] (paper: 0.5).
            depth: Drain tree depth, at least 3 (paper: 4).
            max_children: Most children of a prefix-tree node, at least 2.
            masking: ``(regex, mask name)`` pairs applied in order; ``None`` for
                :data:`DEFAULT_MASKING`, an empty sequence for no masking.
            cache_size: Entries of the LRU cache used by :meth:`match` (0 disables it).

        Raises:
            ConfigError: If a setting is out of range or a masking regex does not compile.
        """
        if isinstance(sim_th, bool) or not isinstance(sim_th, int | float):
            raise ConfigError(f"Drain sim_th must be a number in [0, 1], got {sim_th!r}")
        if not 0.0 <= float(sim_th) <= 1.0:
            raise ConfigError(f"Drain sim_th must lie in [0, 1], got {sim_th}; the paper uses 0.5")
        for name, value, low in (("depth", depth, 3), ("max_children", max_children, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"Drain {name} must be an integer of at least {low}, got {value!r}"
                    + ("; the paper uses 4" if name == "depth" else "")
                )
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigError(f"cache_size must be an integer >= 0, got {cache_size!r}")
        self.sim_th = float(sim_th)
        self.depth = depth
        self.max_children = max_children
        self.cache_size = cache_size
        pairs = DEFAULT_MASKING if masking is None else masking
        checked: list[tuple[str, str]] = []
        instructions = []
        for entry in pairs:
            if (
                not isinstance(entry, tuple | list)
                or len(entry) != 2
                or not all(isinstance(part, str) for part in entry)
            ):
                raise ConfigError(
                    f"each masking entry must be a (regex, mask name) pair of strings, "
                    f"got {entry!r}"
                )
            pattern, mask_name = entry
            try:
                instructions.append(MaskingInstruction(pattern, mask_name))
            except re.error as exc:
                raise ConfigError(
                    f"masking regex {pattern!r} (mask {mask_name!r}) does not compile: {exc}"
                ) from exc
            checked.append((pattern, mask_name))
        self._masking = tuple(checked)
        self._masker = LogMasker(instructions, _MASK_PREFIX, _MASK_SUFFIX)
        self._drain = Drain(depth=depth, sim_th=self.sim_th, max_children=max_children)
        self._templates: dict[str, Template] | None = None
        self._match_cached: Callable[[str], Template | None] = self._match_masked
        self._reset_cache()

    # -- learning ------------------------------------------------------------------------

    def mask(self, content: str) -> str:
        """Apply the masking instructions to one content string.

        Args:
            content: Raw content (the parse field of a record).

        Returns:
            The masked content, e.g. ``"<NUM> double-hummer alignment exceptions"``.
        """
        return str(self._masker.mask(content))

    def learn(self, contents: Iterable[str]) -> list[str]:
        """Mine templates from offline content lines.

        Every line is masked and added to Drain, which may create a cluster or generalise an
        existing template. Cluster ids never change, so the EventID returned for an early line
        is still its cluster's id after later lines generalised the template; after learning,
        :attr:`templates` holds the final templates.

        Args:
            contents: Content strings (label-free, see :mod:`fame.logs`), in order.

        Returns:
            The EventID of each line, in order.
        """
        drain = self._drain
        mask = self._masker.mask
        event_ids: list[str] = []
        before = len(drain.id_to_cluster)
        for content in contents:
            cluster, _ = drain.add_log_message(mask(content))
            event_ids.append(_event_id(cluster.cluster_id))
        self._templates = None
        self._reset_cache()
        logger.info(
            "Drain learned %d lines: %d templates (%d new)",
            len(event_ids),
            len(drain.id_to_cluster),
            len(drain.id_to_cluster) - before,
        )
        return event_ids

    def learn_one(self, content: str) -> Template:
        """Add one line online and return its (possibly new or generalised) template.

        Used for templates never seen offline (:mod:`fame.triage`), one line at a time and
        without a log line per call.

        Args:
            content: Raw content of one line.

        Returns:
            The line's template after adding it.
        """
        cluster, _ = self._drain.add_log_message(self._masker.mask(content))
        self._templates = None
        self._reset_cache()
        return Template(
            event_id=_event_id(cluster.cluster_id),
            template=cluster.get_template(),
            size=int(cluster.size),
        )

    # -- matching ------------------------------------------------------------------------

    def _reset_cache(self) -> None:
        if self.cache_size:
            self._match_cached = functools.lru_cache(maxsize=self.cache_size)(self._match_masked)
        else:
            self._match_cached = self._match_masked

    def _match_masked(self, masked: str) -> Template | None:
        # "fallback": tree search first, then all templates of the same length, so a line is
        # not missed because Drain filed its template under another first token.
        cluster = self._drain.match(masked, full_search_strategy="fallback")
        if cluster is None:
            return None
        return self._template_map().get(_event_id(cluster.cluster_id))

    def match(self, content: str) -> Template | None:
        """Find the frozen template of a line, without creating or changing any template.

        A template matches when every non-wildcard token equals the line's token (Drain's
        ``match`` with similarity 1.0). Results are cached by masked content.

        Args:
            content: Raw content of one line.

        Returns:
            The template, or ``None`` for a line unlike any template seen offline.
        """
        return self._match_cached(self._masker.mask(content))

    @property
    def masking(self) -> list[tuple[str, str]]:
        """The ``(regex, mask name)`` pairs in the order they are applied (a copy)."""
        return list(self._masking)

    @property
    def templates(self) -> dict[str, Template]:
        """Current templates by EventID, in cluster-id order (a copy)."""
        return dict(self._template_map())

    def _template_map(self) -> dict[str, Template]:
        if self._templates is None:
            clusters = sorted(self._drain.clusters, key=lambda c: c.cluster_id)
            self._templates = {
                _event_id(c.cluster_id): Template(
                    event_id=_event_id(c.cluster_id),
                    template=" ".join(c.log_template_tokens),
                    size=int(c.size),
                )
                for c in clusters
            }
        return self._templates

    def __len__(self) -> int:
        """Number of templates."""
        return len(self._drain.id_to_cluster)

    # -- persistence ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Describe the parser as plain JSON data.

        Returns:
            Settings, the masking list and, per cluster, its id, template tokens and size.
        """
        clusters = sorted(self._drain.clusters, key=lambda c: c.cluster_id)
        return {
            "format": PARSER_JSON_TAG,
            "sim_th": self.sim_th,
            "depth": self.depth,
            "max_children": self.max_children,
            "masking": [[pattern, name] for pattern, name in self._masking],
            "clusters_counter": int(self._drain.clusters_counter),
            "clusters": [
                {
                    "id": int(c.cluster_id),
                    "template": list(c.log_template_tokens),
                    "size": int(c.size),
                }
                for c in clusters
            ],
        }

    @classmethod
    def from_json(cls, data: Any, *, cache_size: int = 65536) -> TemplateParser:
        """Rebuild a parser written by :meth:`to_json`; it matches exactly as the original.

        The prefix tree is rebuilt by replaying Drain's own ``add_seq_to_prefix_tree`` with
        the final templates in cluster-id (creation) order. This reproduces the learned tree
        node for node: a line only reaches a cluster through the node its creation tokens
        chose, and a literal node is only entered by lines carrying that very token, so the
        tokens that place a template in the tree either never generalise or already sat under
        the ``<*>`` node. The tests check the round trip line by line on real logs.

        Args:
            data: The decoded JSON object.
            cache_size: Entries of the match cache.

        Returns:
            The parser.

        Raises:
            BundleError: If the data is not a parser description of this version or is
                malformed.
        """
        if not isinstance(data, dict):
            raise _corrupt(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != PARSER_JSON_TAG:
            raise BundleError(
                f"template JSON has tag {data.get('format')!r}, expected {PARSER_JSON_TAG!r}; "
                "the bundle is from another fame version or corrupt, rebuild it with fame setup"
            )
        for key in ("sim_th", "depth", "max_children", "masking", "clusters", "clusters_counter"):
            if key not in data:
                raise _corrupt(f"missing key {key!r}")
        masking = data["masking"]
        if not isinstance(masking, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m)
            for m in masking
        ):
            raise _corrupt("'masking' must be a list of [regex, mask name] string pairs")
        try:
            parser = cls(
                sim_th=data["sim_th"],
                depth=data["depth"],
                max_children=data["max_children"],
                masking=[(m[0], m[1]) for m in masking],
                cache_size=cache_size,
            )
        except ConfigError as exc:
            raise _corrupt(f"invalid settings: {exc}") from exc

        clusters = data["clusters"]
        counter = data["clusters_counter"]
        if not isinstance(clusters, list):
            raise _corrupt("'clusters' must be a list")
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise _corrupt("'clusters_counter' must be an integer")
        drain = parser._drain
        previous = 0
        for i, item in enumerate(clusters):
            cluster_id, tokens, size = _check_cluster(item, i)
            if cluster_id <= previous:
                raise _corrupt(f"cluster {i}: ids must be unique and increasing, got {cluster_id}")
            if cluster_id > counter:
                raise _corrupt(f"cluster {i}: id {cluster_id} exceeds clusters_counter {counter}")
            previous = cluster_id
            # Same order of operations as Drain.add_log_message when it creates a cluster.
            cluster = LogCluster(tokens, cluster_id)
            cluster.size = size
            drain.id_to_cluster[cluster_id] = cluster
            drain.add_seq_to_prefix_tree(drain.root_node, cluster)
        drain.clusters_counter = counter
        logger.debug("loaded %d templates", len(clusters))
        return parser


def _corrupt(what: str) -> BundleError:
    return BundleError(
        f"template JSON is malformed: {what}; the bundle's templates.json is corrupt, "
        "rebuild the bundle with fame setup"
    )


def _check_cluster(item: Any, index: int) -> tuple[int, list[str], int]:
    if not isinstance(item, dict):
        raise _corrupt(f"cluster {index} is not an object")
    cluster_id = item.get("id")
    tokens = item.get("template")
    size = item.get("size")
    if isinstance(cluster_id, bool) or not isinstance(cluster_id, int) or cluster_id < 1:
        raise _corrupt(f"cluster {index}: 'id' must be a positive integer, got {cluster_id!r}")
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise _corrupt(f"cluster {cluster_id}: 'template' must be a list of non-empty strings")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _corrupt(f"cluster {cluster_id}: 'size' must be an integer >= 0, got {size!r}")
    return cluster_id, tokens, size
