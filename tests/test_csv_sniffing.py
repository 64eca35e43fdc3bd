"""CSV dialect sniffing reads a bounded sample (issue 29, a low): Python's
`csv.Sniffer` takes time quadratic in its sample on quoted fields, so a
64 KB sample of such a file took seconds. The sniffer is handed the start
of the file only, cut at a line end, and the whole file still parses with
the dialect found there."""

from __future__ import annotations

import csv
from pathlib import Path

from ingest.loaders import kind_of, load, sha256_file

MOST_SNIFFED = 8 * 1024  # characters: the bound this test holds the loader to


def test_the_sniffer_sees_a_bounded_sample_and_a_1mb_csv_parses(tmp_path: Path, monkeypatch):
    handed: list[str] = []
    real = csv.Sniffer.sniff

    def sniff(self, sample, delimiters=None):  # the real sniffer, its sample measured
        handed.append(sample)
        assert len(sample) <= MOST_SNIFFED, f"the sniffer was handed {len(sample)} characters"
        return real(self, sample, delimiters)

    monkeypatch.setattr(csv.Sniffer, "sniff", sniff)
    # Semicolons between fields quoted with commas and doubled quotes inside:
    # the pattern the sniffer's quote regex backtracks on.
    rows = ['"id";"name";"remark"']
    n = 0
    while sum(len(r) + 1 for r in rows) < 1024 * 1024:
        n += 1
        rows.append(f'"{n}";"Name, {n}";"said ""hi"", then left at {n}"')
    path = tmp_path / "big.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    document = load(str(path), kind_of(path), sha256_file(path))
    assert len(handed) == 1 and handed[0].endswith("\n")  # whole lines only
    lines = document.text.split("\n")
    assert lines[0] == "| id | name | remark |"
    assert lines[1] == '| 1 | Name, 1 | said "hi", then left at 1 |'
    assert lines[-1] == f'| {n} | Name, {n} | said "hi", then left at {n} |'
    assert len(lines) == n + 1
