"""Which Co3D categories a run or a conversion reads: one parser and one check for every reader.

A selection is written the same way everywhere: "all" (or empty) for every category present, "train41" for
the 41 categories VGGT trains on, or names ("apple,tv" on the command line, [apple, tv] in a config).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Union

TRAIN41 = "train41"
CO3D_TRAIN_CATEGORIES = tuple(
    "apple backpack banana baseballbat baseballglove bench bicycle bottle bowl broccoli cake car carrot cellphone "
    "chair cup donut hairdryer handbag hydrant keyboard laptop microwave motorcycle mouse orange parkingmeter pizza "
    "plant stopsign teddybear toaster toilet toybus toyplane toytrain toytruck tv umbrella vase wineglass".split())

Selection = Union[None, str, Sequence[str]]


def parse_categories(selection: Selection) -> Optional[List[str]]:
    """The categories `selection` names, sorted and unique, or None for every category ("all", "", None, []).

    "train41" (alone or among names) expands to the 41 VGGT training categories."""
    if selection is None:
        return None
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    names = [str(x).strip() for x in items if str(x).strip()]
    if not names or names == ["all"]:
        return None
    out: set = set()
    for name in names:
        out.update(CO3D_TRAIN_CATEGORIES if name == TRAIN41 else [name])
    return sorted(out)


def select_categories(selection: Selection, available: Iterable[str]) -> List[str]:
    """The selected categories among `available`, sorted; ValueError naming those that are not there."""
    present = sorted(set(available))
    wanted = parse_categories(selection)
    if wanted is None:
        return present
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(f"categor{'y' if len(missing) == 1 else 'ies'} not found: {', '.join(missing)}")
    return wanted
