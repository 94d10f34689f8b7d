"""Hugging Face `datasets` as a corpus source: "hf:NAME[:SPLIT[:COLUMN]]", each row one document."""

from __future__ import annotations

from .document import Document


def hf_documents(spec: str) -> list[Document]:
    """The rows of a dataset split as documents (default split "train", column "text"). Needs `pip install datasets`
    and, for a dataset not in the local cache, the network."""
    parts = spec.split(":", 2)
    name, split, column = parts[0], (parts[1:2] or ["train"])[0], (parts[2:3] or ["text"])[0]
    if not name:
        raise ValueError("give a dataset name after 'hf:', e.g. hf:roneneldan/TinyStories")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"hf:{spec} needs the `datasets` package: pip install datasets") from None
    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, a missing dataset or split: all end the same way for the user
        raise FileNotFoundError(f"could not load the dataset {name!r} split {split!r} ({type(e).__name__}: {e})") from e
    if column not in table.column_names:
        raise ValueError(f"dataset {name!r} has no column {column!r}; its columns: {table.column_names}")
    texts = table[column]
    kinds = sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
    if kinds:  # caught here, not as the tokenizer's "TextInputSequence must be str" mid-run
        raise ValueError(f"dataset {name!r} column {column!r} holds {', '.join(kinds)} values, not text; name a "
                         f"text column: hf:{name}:{split}:COLUMN (its columns: {table.column_names})")  # fmt: skip
    return [
        Document(f"{name}/{split}/{i}", len(t), lambda t=t: t, stamp=str(getattr(table, "_fingerprint", "")))
        for i, t in enumerate(texts)
    ]
