"""Lazy package exports (PEP 562): a package names its public objects without importing their modules up front."""

from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, namespace: dict, names: Dict[str, str]) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """(__getattr__, __dir__) for `package` whose `names` map a public name to the module defining it; each is
    imported on first access and then kept in `namespace` (the package's globals())."""

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
