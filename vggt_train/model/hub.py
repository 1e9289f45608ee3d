"""Where `model.checkpoint` points: a local file, or a Hugging Face Hub repo resolved through the local hub cache.

Accepted forms (a local file or directory of that name always wins):

    /ckpt/model.pt, runs/x/model.safetensors    a local file
    facebook/VGGT-1B                            the repo's model.safetensors, else its model.pt
    facebook/VGGT-1B@<revision>                 a branch, tag or commit
    facebook/VGGT-1B/model.pt                   one file of the repo (also with @<revision> before it)
    hf://facebook/VGGT-1B...                    the same, never read as a local path

Downloads go through `huggingface_hub.hf_hub_download`, so its cache (`HF_HUB_CACHE`, `HF_HOME`) and offline mode
(`HF_HUB_OFFLINE=1`: the cache only) apply as for every Hub tool. Only tensors are ever read from the file
(model/weights.py), whatever repository it comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

HUB_PREFIX = "hf://"
DEFAULT_FILES = ("model.safetensors", "model.pt")  # the safetensors file first: no pickle at all
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(rf"^(?P<owner>{_PART})/(?P<name>{_PART})(?:@(?P<revision>[A-Za-z0-9._-]+))?(?:/(?P<file>{_PART}(?:/{_PART})*))?$")


class CheckpointSourceError(ValueError):
    """`model.checkpoint` names nothing loadable; the message says what was tried."""


@dataclass(frozen=True)
class HubRef:
    """A checkpoint on the Hub: repo id, optional revision and optional file within the repo."""

    repo_id: str
    revision: Optional[str] = None
    filename: Optional[str] = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "") + (f"/{self.filename}" if self.filename else "")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint as a local file, and where it came from (for the run's banner and run_info.json)."""

    path: Path
    source: str  # "local" or "hub"
    ref: Optional[HubRef] = None

    def describe(self) -> str:
        return str(self.path) if self.ref is None else f"{self.ref} (Hugging Face Hub) -> {self.path}"


def parse_hub_ref(text: str) -> Optional[HubRef]:
    """The HubRef `text` names, or None when it is a local path (see the module docstring for the rules)."""
    explicit = text.startswith(HUB_PREFIX)
    body = text[len(HUB_PREFIX):] if explicit else text
    if not explicit:
        path = Path(text)
        if path.is_absolute() or path.exists() or text.startswith((".", "~")) or "\\" in text:
            return None
        if Path(path.parts[0]).exists() and len(path.parts) > 2:  # runs/x/model.pt under an existing runs/
            return None
    match = _REF.match(body)
    if match is None:
        if explicit:
            raise CheckpointSourceError(f"model.checkpoint={text!r}: expected hf://owner/name[@revision][/file]")
        return None
    if not explicit and match["file"] is None and match["name"].endswith(CHECKPOINT_SUFFIXES):
        return None  # ckpt/model.pt: a missing local file, not a repo called model.pt
    return HubRef(f"{match['owner']}/{match['name']}", match["revision"], match["file"])


def _entry_not_found_types() -> Tuple[type, ...]:
    import huggingface_hub

    names = ("EntryNotFoundError", "LocalEntryNotFoundError", "RemoteEntryNotFoundError")
    found = []
    for module_name in ("errors", "utils"):
        module = getattr(huggingface_hub, module_name, None)
        found += [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    return tuple(found) or (FileNotFoundError,)


def download(ref: HubRef) -> Path:
    """The local path of the checkpoint `ref` names (downloaded into the hub cache unless it is there)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of datasets and accelerate
        raise CheckpointSourceError(f"model.checkpoint={ref}: a Hub repo id needs huggingface_hub (pip install huggingface_hub)") from None
    not_found = _entry_not_found_types()
    candidates = (ref.filename,) if ref.filename else DEFAULT_FILES
    tried = []
    for filename in candidates:
        try:
            return Path(hf_hub_download(repo_id=ref.repo_id, filename=filename, revision=ref.revision))
        except not_found as exc:
            tried.append(f"{filename}: {type(exc).__name__}")
        except Exception as exc:  # no network, unknown repo or revision, gated repo, offline mode without the file
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointSourceError(f"model.checkpoint={ref}: not a local file, and the Hugging Face Hub lookup "
                                        f"failed ({type(exc).__name__}: {text})") from None
    raise CheckpointSourceError(f"model.checkpoint={ref}: not a local file, and the Hub repo has none of "
                                f"{', '.join(candidates)} (tried: {'; '.join(tried)}); with HF_HUB_OFFLINE=1 only the "
                                f"local hub cache is searched")


def resolve_checkpoint(text: str) -> ResolvedCheckpoint:
    """A local checkpoint file for `model.checkpoint`: the file itself, or the Hub file (downloaded or cached)."""
    ref = parse_hub_ref(text)
    if ref is None:
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointSourceError(f"model.checkpoint={text!r}: file not found"
                                        + (" (it is a directory)" if path.is_dir() else f" (looked in {Path.cwd()})"
                                           if not path.is_absolute() else ""))
        return ResolvedCheckpoint(path, "local")
    return ResolvedCheckpoint(download(ref), "hub", ref)
