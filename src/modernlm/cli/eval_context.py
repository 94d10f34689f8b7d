"""`modernlm eval context`: a model stretched past its training length with each RoPE scaling, measured.

modernlm eval context --model M --scaling yarn,dynamic,none --factor 4 [--out DIR]
  perplexity by position on long held-out text (bucketed; perplexity.png), passkey accuracy by depth and length
  (passkey.png, a heat map per scaling), the KV-cache bytes at each length beside the formula; result.json.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from . import positive_int
from .common import add_model_args, load_for

log = logging.getLogger("modernlm")


def add_context_parser(kinds) -> None:
    from ..eval.long_context import KINDS

    p = kinds.add_parser("context", help="long context: perplexity by position and passkey retrieval, per scaling")
    add_model_args(p, kv_cache=True)
    p.add_argument("--scaling", default="none", help=f"comma-separated kinds: {', '.join(KINDS)} (default: none)")
    p.add_argument("--factor", type=float, default=4.0, help="target length over the model's length (default: 4)")
    p.add_argument(
        "--lengths", default=None, help="comma-separated context lengths (default: L, 2L, 4L... up to factor x L)"
    )
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="passkey depths, fractions of the context")
    p.add_argument("--trials", type=positive_int, default=2, help="passkeys per (length, depth) cell (default: 2)")
    p.add_argument("--buckets", type=positive_int, default=16, help="position buckets of the perplexity curve")
    p.add_argument("--windows", type=positive_int, default=1, help="text windows averaged per length (default: 1)")
    p.add_argument("--chunk", type=positive_int, default=512, help="prefill chunk in tokens (default: 512)")
    p.add_argument("--text", default=None, help="long UTF-8 text (default: Python stdlib source past the lab's part)")
    p.add_argument("--skip", choices=["perplexity", "passkey"], default=None, help="leave one measurement out")
    p.add_argument("--out", type=Path, default=None, help="write result.json and the plots here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_context)


def _parse(args, model_len: int) -> tuple[list[str], list[int], list[float]]:
    from ..eval.long_context import KINDS, LongContextError

    kinds = [k.strip() for k in args.scaling.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise LongContextError(f"unknown --scaling {unknown or args.scaling!r}; choose from {', '.join(KINDS)}")
    target = math.ceil(model_len * args.factor)
    try:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
        depths = [float(x) for x in args.depths.split(",")]
    except ValueError as e:
        raise LongContextError(f"--lengths and --depths are comma-separated numbers: {e}") from None
    if lengths is None:
        lengths = [model_len * 2**i for i in range(int(math.log2(max(args.factor, 1))) + 1)]
        lengths = [n for n in lengths if n < target] + [target]
    if any(n < 2 for n in lengths) or max(lengths) > target:
        raise LongContextError(
            f"--lengths must lie in [2, factor x the model's length = {target}], got {lengths}; raise --factor"
        )
    return kinds, sorted(set(lengths)), depths


def _trained_config(config, source):
    """The model's config with max_seq_len at the length it was trained at, the "1x" of every row: the run's
    train_config.json seq_len where it records one (a run trained at 128 tokens with max_seq_len 512 is at 4x by 512);
    else max_seq_len itself, with a notice."""
    from ..config import ModelConfig
    from ..training.setup import training_length

    path = Path(str(source)) if source is not None else None
    trained = training_length(path) if path is not None and path.is_dir() else None
    if trained is None:
        log.info("%s records no training length (a modernlm run's train_config.json): taking its max_seq_len %d as "
                 "the length it was trained at", source, config.max_seq_len)  # fmt: skip
        return config
    if trained >= config.max_seq_len:
        return config
    log.info("%s was trained on %d-token sequences (train_config.json), below its max_seq_len %d: lengths are "
             "multiples of %d", source, trained, config.max_seq_len, trained)  # fmt: skip
    return ModelConfig.from_dict({**config.to_dict(), "max_seq_len": trained}, str(source)).validate()


def run_context(args) -> int:
    from ..eval import long_context as lc
    if args.text is not None and not Path(args.text).is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file; give a UTF-8 text file")
    model, tokenizer = load_for(args)
    base = _trained_config(model.config, args.model)
    kinds, lengths, depths = _parse(args, base.max_seq_len)
    ids = tokenizer.encode(lc.long_text(args.text)) if args.skip != "perplexity" else []
    if ids and len(ids) < max(lengths) + 1:
        need = max(lengths) + 1
        raise lc.LongContextError(f"the text has {len(ids)} tokens, fewer than {need}; give a longer --text")
    result = {"model": args.model, "trained_length": base.max_seq_len, "factor": args.factor, "lengths": lengths}
    result["scalings"] = {}
    for kind in kinds:
        model.config = base
        model.reset_rope()
        lc.apply_scaling(model, kind, args.factor)
        t0 = time.perf_counter()
        entry: dict = {"rope_scaling": model.config.rope_scaling}
        if args.skip != "perplexity":
            entry["perplexity"] = [
                vars(lc.position_perplexity(model, ids, n, args.buckets, args.windows, args.chunk)) for n in lengths
            ]
        if args.skip != "passkey":
            entry["passkey"] = vars(lc.passkey(model, tokenizer, lengths, depths, args.trials, args.chunk))
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        result["scalings"][kind] = entry
        print(f"[{kind}: {entry['seconds']} s]", file=sys.stderr)
    result["kv_cache"] = lc.kv_cache_report(model, lengths)
    _report(result, args)
    return 0


def _report(result: dict, args) -> None:
    if args.out is not None:
        from ..files import write_json

        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "result.json", result)
        _plots(result, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for kind, entry in result["scalings"].items():
        for p in entry.get("perplexity", []):
            curve = " ".join(f"{x:.1f}" for x in p["perplexity"])
            print(f"{kind:>12} ppl @ {p['length']:>6} by {p['bucket']}-token buckets: {curve}")
        if "passkey" in entry:
            k = entry["passkey"]
            for n, row in zip(k["lengths"], k["accuracy"], strict=True):
                cells = " ".join(f"{a:.2f}" for a in row)
                print(f"{kind:>12} passkey @ {n:>6}, depths {k['depths']}: {cells} (chance {k['chance']:.0e})")
    for row in result["kv_cache"]:
        print(
            f"KV cache @ {row['length']}: {row['measured']:,} bytes allocated, formula {row['formula']:,} "
            f"(every position kept: {row['without_window']:,})"
        )


def _plots(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    scalings = result["scalings"]
    if any("perplexity" in e for e in scalings.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for kind, entry in scalings.items():
            longest = entry["perplexity"][-1]
            xs = [(i + 0.5) * longest["bucket"] for i in range(len(longest["perplexity"]))]
            ax.plot(xs, longest["perplexity"], "o-", label=kind)
        ax.axvline(result["trained_length"], color="gray", lw=0.8)
        ax.set(xlabel="position", ylabel="perplexity", yscale="log", title=f"{result['model']}: loss by position")
        ax.legend()
        _save(fig, out / "perplexity.png", atomic_path, plt)
    keyed = {k: e["passkey"] for k, e in scalings.items() if "passkey" in e}
    if keyed:
        fig, axes = plt.subplots(1, len(keyed), figsize=(4 * len(keyed), 3.5), squeeze=False)
        for ax, (kind, k) in zip(axes[0], keyed.items(), strict=True):
            ax.imshow(k["accuracy"], vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for i, row in enumerate(k["accuracy"]):
                for j, a in enumerate(row):
                    ax.text(j, i, f"{a:.0%}", ha="center", va="center", color="white" if a < 0.5 else "black")
            ax.set_xticks(range(len(k["depths"])), [f"{d:.0%}" for d in k["depths"]])
            ax.set_yticks(range(len(k["lengths"])), k["lengths"])
            ax.set(xlabel="depth", ylabel="length", title=f"passkey, {kind}")
        _save(fig, out / "passkey.png", atomic_path, plt)


def _save(fig, path: Path, atomic_path, plt) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
