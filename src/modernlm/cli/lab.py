"""`modernlm lab list`, `modernlm lab run NAME [--quick] [--out DIR]`: the claims of the study material, measured;
`modernlm lab cards --out deck.tsv [--apkg deck.apkg] [--root lab]`: what was measured, as an Anki deck."""

from __future__ import annotations

import textwrap

from .. import lab


def add_parser(sub) -> None:
    p = sub.add_parser("lab", help="run the experiments that check the study material's claims on this machine")
    verbs = p.add_subparsers(dest="lab_verb", metavar="ACTION", required=True)
    verbs.add_parser("list", help="name, claim and source of every experiment").set_defaults(func=run_list)
    r = verbs.add_parser("run", help="run one experiment; write result.json, plot.png and verdict.md")
    r.add_argument("name", help="the experiment (see `modernlm lab list`)")
    r.add_argument("--quick", action="store_true", help="a smaller run (seconds instead of minutes)")
    r.add_argument("--out", default=None, help="output directory (default: lab/NAME)")
    r.set_defaults(func=run_one)
    c = verbs.add_parser("cards", help="an Anki deck of the measured claims: a TSV (front, tab, back) and/or an .apkg")
    c.add_argument("--out", default=None, help="the TSV file to write (one note a line, HTML fields)")
    c.add_argument("--apkg", default=None, help="an Anki package to write, plots included (needs genanki)")
    c.add_argument("--root", default="lab", help="where the results are: ROOT/NAME/result.json (default: lab)")
    c.set_defaults(func=run_cards)


def run_list(args) -> int:
    for exp in lab.experiments().values():
        print(exp.name)
        print(textwrap.indent(textwrap.fill(f"claim: {exp.claim}", 100), "  "))
        print(textwrap.indent(textwrap.fill(f"source: {exp.source}", 100), "  "))
    return 0


def run_one(args) -> int:
    finding, out = lab.run(args.name, quick=args.quick, out=args.out)
    print(f"{args.name}: {finding.verdict}")
    print(textwrap.fill(finding.summary, 100))
    print(f"wrote {out / 'result.json'}, {out / 'plot.png'}, {out / 'verdict.md'}")
    return 0


def run_cards(args) -> int:
    from ..lab.cards import write_apkg, write_tsv

    if args.out is None and args.apkg is None:
        raise ValueError("lab cards writes nothing without --out deck.tsv or --apkg deck.apkg; give one or both")
    for path, write in ((args.out, write_tsv), (args.apkg, write_apkg)):
        if path is not None:
            print(f"wrote {write(args.root, path)}")
    return 0
