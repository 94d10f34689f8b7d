"""The lab's Anki deck: the TSV is Anki's two-field, HTML-escaped import format; the .apkg is a zip whose SQLite
collection holds one note per claim and whose media are the plots."""

from __future__ import annotations

import html
import json
import sqlite3
import zipfile

import pytest

from modernlm import lab
from modernlm.cli.__main__ import main

TRICKY = "a <b>claim</b> & its\ttab\nand a new line"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two real quick runs (the cheapest experiments) and a hand-made result with characters that need escaping."""
    root = tmp_path_factory.mktemp("results")
    for name in ("rope", "attention-scale"):
        lab.run(name, quick=True, out=root / name)
    record = json.loads((root / "rope" / "result.json").read_text())
    (root / "tricky").mkdir()
    record.update(name="tricky", claim=TRICKY, summary="5 < 6 & 7 > 3\tdone")
    record.pop("date")  # a result written before results had a date: the file's own date is used
    (root / "tricky" / "result.json").write_text(json.dumps(record))
    return root


def test_tsv_has_two_escaped_fields_a_line(root, tmp_path, capsys):
    out = tmp_path / "deck.tsv"
    assert main(["lab", "cards", "--root", str(root), "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    for line in lines:
        front, _ = line.split("\t")  # exactly two fields
        assert "<" not in front.replace("<br>", "")  # the claim's own markup is escaped
    fronts = {ln.split("\t")[0]: ln.split("\t")[1] for ln in lines}
    claims = {e.claim for e in lab.experiments().values()}
    assert {html.unescape(f) for f in fronts} - {html.unescape(_escaped(TRICKY))} <= claims
    tricky_back = fronts[_escaped(TRICKY)]
    assert "5 &lt; 6 &amp; 7 &gt; 3 done" in tricky_back
    rope = json.loads((root / "rope" / "result.json").read_text())
    rope_back = next(b for f, b in fronts.items() if html.unescape(f) == rope["claim"])
    assert f"<b>{rope['verdict']}</b>" in rope_back and html.escape(rope["summary"]) in rope_back
    assert rope["date"] in rope_back and html.escape(rope["machine"]) in rope_back


def _escaped(text: str) -> str:
    return html.escape(text).replace("\t", " ").replace("\n", "<br>")


def test_apkg_opens_with_sqlite_and_holds_notes_and_plots(root, tmp_path):
    pytest.importorskip("genanki")
    out = tmp_path / "deck.apkg"
    assert main(["lab", "cards", "--root", str(root), "--apkg", str(out)]) == 0
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert "collection.anki2" in names
        media = json.loads(z.read("media"))  # {"0": "modernlm-lab-rope.png", ...}
        assert sorted(media.values()) == ["modernlm-lab-attention-scale.png", "modernlm-lab-rope.png"]  # tricky: none
        for index in media:
            assert z.read(index)[:4] == b"\x89PNG"
        (tmp_path / "collection.anki2").write_bytes(z.read("collection.anki2"))
    with sqlite3.connect(tmp_path / "collection.anki2") as db:
        notes = [row[0].split("\x1f") for row in db.execute("select flds from notes")]
        cards = db.execute("select count(*) from cards").fetchone()[0]
    assert len(notes) == cards == 3 and all(len(fields) == 2 for fields in notes)
    backs = dict(notes)  # front (HTML) -> back
    assert '<img src="modernlm-lab-rope.png">' in backs[_escaped(lab.get("rope").claim)]
    tricky = backs[_escaped(TRICKY)]
    assert "<b>" in tricky and "5 &lt; 6" in tricky and "<img" not in tricky


def test_cards_needs_an_output_and_results(tmp_path):
    assert main(["lab", "cards", "--root", str(tmp_path)]) == 2  # neither --out nor --apkg
    assert main(["lab", "cards", "--root", str(tmp_path), "--out", str(tmp_path / "d.tsv")]) == 2  # no results
