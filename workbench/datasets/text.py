"""Reading tab-separated text files line by line, so that errors can name the line."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from workbench.errors import RelationError


def tab_separated_lines(path: Path) -> pl.DataFrame:
    """The non-blank lines of a text file: 1-based ``line_no``, the raw ``line``, and ``parts``, its
    tab-separated fields with the whitespace around each stripped. A UTF-8 byte-order mark is
    dropped; line ends are LF, CRLF or CR."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RelationError(f"{str(path)!r}, line {line}: not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start}); save the file as UTF-8") from None
    lines = pl.DataFrame({"line": text.replace("\r\n", "\n").replace("\r", "\n").split("\n")},
                         schema={"line": pl.String}).with_row_index("line_no", offset=1)
    return lines.filter(pl.col("line").str.strip_chars() != "").with_columns(
        pl.col("line").str.split("\t").list.eval(pl.element().str.strip_chars()).alias("parts"))
