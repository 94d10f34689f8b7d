"""The lab's findings as an Anki deck: one note per claim, the front the claim, the back the verdict with the measured
numbers and the machine and date they were measured on.

`write_tsv` writes the study cards' own plain-text format: one note a line, front TAB back, HTML-escaped (Anki's
"Allow HTML in fields" import; newlines become <br>, so a line is always exactly two fields). `write_apkg` writes an
Anki package through genanki, with each experiment's plot.png as media shown on the back. Both read the result.json
files that `lab.run` wrote under a root directory (default lab/), like `write_report`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_path, write_text

DECK_ID = 1_716_160_601  # fixed ids: re-importing a newer deck updates these notes instead of adding copies
MODEL_ID = 1_716_160_602
DECK_NAME = "modernlm lab: the study material's claims, measured"
CSS = ".card { font-family: sans-serif; font-size: 18px; text-align: left; } img { max-width: 100%; }"


@dataclass(frozen=True)
class Card:
    name: str
    front: str  # HTML
    back: str  # HTML, without the plot
    plot: Path | None


def _html(text: str) -> str:
    """Escaped text with line breaks as <br> and tabs as spaces: safe inside one TSV field and one Anki field."""
    return html.escape(str(text)).replace("\t", " ").replace("\r\n", "\n").replace("\n", "<br>")


def _date(record: dict, path: Path) -> str:
    """The run's date: result.json's own field, or (results written before it had one) the file's modification day."""
    if record.get("date"):
        return str(record["date"])
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()


def load_cards(root: str | Path) -> list[Card]:
    """One card per experiment directory under `root` that holds a result.json."""
    root = Path(root)
    paths = sorted(root.glob("*/result.json"))
    if not paths:
        raise FileNotFoundError(f"no result.json under {root}; run the experiments first (modernlm lab run NAME)")
    cards = []
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("name", "claim", "source", "verdict", "summary") if k not in r]
        if missing:
            raise ValueError(f"{path} lacks {missing}: it is not a lab result; rerun `modernlm lab run` for it")
        run = f"{'quick' if r.get('quick') else 'full'} run, {r.get('seconds', 0):.0f} s"
        back = (
            f"<b>{_html(r['verdict'])}</b> ({_html(r['name'])})<br><br>{_html(r['summary'])}<br><br>"
            f"<small>Source: {_html(r['source'])}<br>Measured on {_html(r.get('machine', 'an unknown machine'))}, "
            f"{_html(_date(r, path))} ({_html(run)}) by modernlm.</small>"
        )
        plot = path.parent / "plot.png"
        cards.append(Card(r["name"], _html(r["claim"]), back, plot if plot.is_file() else None))
    return cards


def write_tsv(root: str | Path, out: str | Path) -> Path:
    """The deck as front TAB back lines (UTF-8)."""
    lines = [f"{c.front}\t{c.back}" for c in load_cards(root)]
    return write_text(out, "\n".join(lines) + "\n")


def _media_name(card: Card) -> str:
    return f"modernlm-lab-{card.name}.png"  # Anki's media folder is flat: names must be unique across decks


def write_apkg(root: str | Path, out: str | Path) -> Path:
    """The deck as an Anki package (.apkg), each plot included as media and shown under the back's text."""
    try:
        import genanki
    except ImportError as e:
        raise ValueError(f"--apkg needs genanki: pip install 'modernlm[lab]' ({e})") from None
    model = genanki.Model(
        MODEL_ID,
        "modernlm lab claim",
        fields=[{"name": "Front"}, {"name": "Back"}],
        templates=[{"name": "Claim", "qfmt": "{{Front}}", "afmt": '{{FrontSide}}<hr id="answer">{{Back}}'}],
        css=CSS,
    )
    deck = genanki.Deck(DECK_ID, DECK_NAME)
    cards = load_cards(root)
    with tempfile.TemporaryDirectory() as media_dir:
        media = []
        for card in cards:
            back = card.back
            if card.plot is not None:
                media.append(str(shutil.copyfile(card.plot, Path(media_dir) / _media_name(card))))
                back += f'<br><img src="{_media_name(card)}">'
            guid = genanki.guid_for("modernlm-lab", card.name)  # stable: a rerun updates the note
            deck.add_note(genanki.Note(model=model, fields=[card.front, back], guid=guid))
        with atomic_path(out) as tmp:
            genanki.Package(deck, media_files=media).write_to_file(str(tmp))
    return Path(out)
