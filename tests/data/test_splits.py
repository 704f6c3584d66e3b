"""Splits: stable for a seed, stratified by label, and kept when the data brings its own."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.data.splits import assign_splits
from engine.errors import DatasetError


def labelled_items(count=60, split=None):
    # three unbalanced classes: 30 / 20 / 10
    labels = ["a"] * (count // 2) + ["b"] * (count // 3) + ["c"] * (count - count // 2 - count // 3)
    return [{"split": split, "label": label, "content_hash": f"{i:04d}"} for i, label in enumerate(labels)]


def splits_of(items):
    return [item["split"] for item in items]


def test_the_same_seed_gives_the_same_splits_and_another_seed_does_not():
    first, again, other = labelled_items(), labelled_items(), labelled_items()
    assign_splits(first, seed=7)
    assign_splits(again, seed=7)
    assign_splits(other, seed=8)
    assert splits_of(first) == splits_of(again)
    assert splits_of(first) != splits_of(other)


def test_splits_do_not_depend_on_the_order_items_were_listed_in():
    forward, backward = labelled_items(), labelled_items()[::-1]
    assign_splits(forward, seed=3)
    assign_splits(backward, seed=3)
    by_hash = {item["content_hash"]: item["split"] for item in backward}
    assert [by_hash[item["content_hash"]] for item in forward] == splits_of(forward)


def test_new_splits_are_stratified_by_label():
    items = labelled_items()
    note = assign_splits(items, validation_fraction=0.2, test_fraction=0.2, seed=1)
    assert "stratified" in note
    per_split = {s: Counter(i["label"] for i in items if i["split"] == s) for s in ("train", "validation", "test")}
    assert per_split["train"] == {"a": 18, "b": 12, "c": 6}
    assert per_split["validation"] == {"a": 6, "b": 4, "c": 2}
    assert per_split["test"] == {"a": 6, "b": 4, "c": 2}


def test_given_splits_are_kept_in_auto_mode_and_redone_in_new_mode():
    items = labelled_items(split="train")[:40] + labelled_items(split="validation")[40:]
    assert "kept" in assign_splits(items)
    assert Counter(splits_of(items)) == {"train": 40, "validation": 20}
    assign_splits(items, mode="new", seed=1)
    assert set(splits_of(items)) == {"train", "validation", "test"}


def test_too_few_items_per_class_fall_back_to_random_splits():
    items = [{"split": None, "label": label, "content_hash": str(i)} for i, label in enumerate("aab")]
    note = assign_splits(items, seed=1)
    assert "at random" in note and all(item["split"] for item in items)


def test_bad_fractions_are_refused():
    with pytest.raises(DatasetError, match="leave something for training"):
        assign_splits(labelled_items(), validation_fraction=0.5, test_fraction=0.5)
