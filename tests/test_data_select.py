"""Category selection: one parser for the converter, the raw source, the shard source and the training config."""

from __future__ import annotations

import pytest

from vggt_train.data.sources.select import CO3D_TRAIN_CATEGORIES, parse_categories, select_categories


@pytest.mark.parametrize("selection", [None, "", "all", [], ["all"], " , "])
def test_every_category(selection):
    assert parse_categories(selection) is None
    assert select_categories(selection, ["tv", "apple"]) == ["apple", "tv"]


def test_names_and_train41_in_either_form():
    assert parse_categories("tv, apple,tv") == parse_categories(["apple", "tv"]) == ["apple", "tv"]
    assert parse_categories("train41") == parse_categories(["train41"]) == sorted(CO3D_TRAIN_CATEGORIES)
    assert len(CO3D_TRAIN_CATEGORIES) == 41 and "tv" in CO3D_TRAIN_CATEGORIES
    assert parse_categories(["train41", "mycat"]) == sorted([*CO3D_TRAIN_CATEGORIES, "mycat"])


def test_missing_categories_are_named():
    with pytest.raises(ValueError, match="categories not found: car, nosuch"):
        select_categories("apple,nosuch,car", ["apple", "tv"])
    with pytest.raises(ValueError, match="category not found: nosuch"):
        select_categories(["nosuch"], ["apple"])
