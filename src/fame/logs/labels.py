"""Line labels kept outside the log, in a CSV file.

Logs without an inline label column (anything but Loghub's BGL and Thunderbird) can be
labelled with a CSV of ``line,label`` rows; :func:`fame.logs.read_records` then attaches the
labels by 1-based line number.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from fame.errors import InputError

__all__ = ["load_label_csv", "parse_label_token"]

logger = logging.getLogger(__name__)

_NORMAL_TOKENS = frozenset({"0", "normal", "false", "-"})
_ANOMALY_TOKENS = frozenset({"1", "anomaly", "anomalous", "true"})


def parse_label_token(token: str) -> bool | None:
    """Interpret one label token.

    ``0``, ``normal``, ``false`` and ``-`` (Loghub's normal marker) mean normal; ``1``,
    ``anomaly``, ``anomalous`` and ``true`` mean anomalous, and so does any other non-empty
    token, which is read as an anomaly category (``KERNDTLB``, ``APPREAD``, ...). Case and
    surrounding whitespace are ignored.

    Args:
        token: The raw label text.

    Returns:
        ``True`` for anomalous, ``False`` for normal, ``None`` for an empty token.
    """
    value = token.strip().lower()
    if not value:
        return None
    if value in _NORMAL_TOKENS:
        return False
    if value in _ANOMALY_TOKENS:
        return True
    # Any other token is an anomaly category, as in Loghub's BGL/Thunderbird label column.
    return True


def load_label_csv(path: str | Path) -> dict[int, bool]:
    """Read a ``line,label`` CSV into a map from 1-based line number to anomaly flag.

    The header must contain the columns ``line`` and ``label`` (case-insensitive; other
    columns are ignored). Labels are read with :func:`parse_label_token`.

    Args:
        path: The CSV file.

    Returns:
        ``{line_number: True if anomalous}``.

    Raises:
        InputError: If the file is missing, a directory, unreadable or empty, lacks one of the
            two columns, or a row has a line number that is not a positive integer, an empty
            label, or a line number given twice with different labels.
    """
    csv_path = Path(path)
    if not csv_path.exists():
        raise InputError(
            f"label file {str(csv_path)!r} does not exist; expected a CSV with header "
            "'line,label' (check the path)"
        )
    if csv_path.is_dir():
        raise InputError(
            f"label file {str(csv_path)!r} is a directory; pass the CSV file inside it"
        )
    labels: dict[int, bool] = {}
    first_row: dict[int, int] = {}
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with csv_path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputError(
                    f"label file {str(csv_path)!r} is empty; expected a header 'line,label' "
                    "followed by one row per labelled line"
                )
            columns = [name.strip().lower() for name in header]
            if "line" not in columns or "label" not in columns:
                found = ", ".join(repr(name) for name in header) or "none"
                raise InputError(
                    f"label file {str(csv_path)!r} needs columns 'line' and 'label' in its "
                    f"header, found {found}; rename the header to 'line,label'"
                )
            line_col = columns.index("line")
            label_col = columns.index("label")
            for row in reader:
                row_no = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue  # blank rows carry nothing
                if len(row) <= max(line_col, label_col):
                    raise InputError(
                        f"label file {str(csv_path)!r}, row {row_no}: expected at least "
                        f"{max(line_col, label_col) + 1} columns, got {len(row)} ({row!r})"
                    )
                raw_line = row[line_col].strip()
                try:
                    line_no = int(raw_line)
                except ValueError:
                    raise InputError(
                        f"label file {str(csv_path)!r}, row {row_no}: line number "
                        f"{raw_line!r} is not an integer; expected the 1-based line number of "
                        "the log line"
                    ) from None
                if line_no < 1:
                    raise InputError(
                        f"label file {str(csv_path)!r}, row {row_no}: line number {line_no} "
                        "is below 1; line numbers are 1-based"
                    )
                label = parse_label_token(row[label_col])
                if label is None:
                    raise InputError(
                        f"label file {str(csv_path)!r}, row {row_no}: the label is empty; "
                        "write 0/normal/- or 1/anomaly/<category>, or remove the row"
                    )
                if line_no in labels and labels[line_no] != label:
                    raise InputError(
                        f"label file {str(csv_path)!r}: line {line_no} is labelled twice with "
                        f"different labels (rows {first_row[line_no]} and {row_no}); keep one"
                    )
                labels[line_no] = label
                first_row.setdefault(line_no, row_no)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"label file {str(csv_path)!r} is not UTF-8 text ({exc}); save it as UTF-8 CSV"
        ) from exc
    except csv.Error as exc:
        raise InputError(f"label file {str(csv_path)!r} is not valid CSV ({exc})") from exc
    except OSError as exc:
        raise InputError(
            f"cannot read label file {str(csv_path)!r} ({exc.strerror or exc}); check its "
            "permissions"
        ) from exc
    if not labels:
        logger.warning("label file %s has a header but no labelled rows", csv_path)
    else:
        logger.info(
            "read %d labels (%d anomalous) from %s",
            len(labels),
            sum(labels.values()),
            csv_path,
        )
    return labels
