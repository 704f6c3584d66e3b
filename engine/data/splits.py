"""Train / validation / test splits: kept as given, or made with a seed (stratified by label).

    note = assign_splits(items, mode="auto", validation_fraction=0.1, test_fraction=0.1, seed=42)

``auto`` keeps the splits a dataset came with when it has more than one, and otherwise makes
new ones. The same items and seed always give the same splits (scikit-learn's
``train_test_split`` with a fixed ``random_state``), so a run can be repeated exactly.
"""

from __future__ import annotations

from collections import Counter

from engine.errors import DatasetError

SPLIT_MODES = ("auto", "keep", "new")


def assign_splits(items: list[dict], mode: str = "auto", validation_fraction: float = 0.1,
                  test_fraction: float = 0.1, seed: int = 42) -> str:
    """Set ``item["split"]`` on every item; returns a sentence saying what was done."""
    if mode not in SPLIT_MODES:
        raise DatasetError(f"splits must be one of {', '.join(SPLIT_MODES)}, not {mode!r}")
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 \
            or validation_fraction + test_fraction >= 1:
        raise DatasetError("validation and test fractions must each be between 0 and 1 and leave "
                           "something for training")
    given = {item["split"] for item in items if item["split"]}
    if mode == "keep" or (mode == "auto" and len(given) > 1):
        for item in items:
            item["split"] = item["split"] or "train"
        return f"kept the splits the dataset came with ({', '.join(sorted(given or {'train'}))})"
    return _new_splits(items, validation_fraction, test_fraction, seed)


def _new_splits(items: list[dict], validation_fraction: float, test_fraction: float, seed: int) -> str:
    from sklearn.model_selection import train_test_split

    # Order by content first, so the result does not depend on the order files were listed in.
    ordered = sorted(range(len(items)), key=lambda i: (items[i].get("content_hash") or "", i))
    labels = [items[i]["label"] for i in ordered]
    stratified = _can_stratify(labels, validation_fraction + test_fraction)
    holdout = validation_fraction + test_fraction
    if holdout == 0 or len(ordered) < 3:
        train, rest = ordered, []
    else:
        train, rest = train_test_split(ordered, test_size=holdout, random_state=seed,
                                       stratify=labels if stratified else None)
    validation, test = rest, []
    if rest and test_fraction > 0:
        share = test_fraction / holdout
        rest_labels = [items[i]["label"] for i in rest]
        inner = stratified and _can_stratify(rest_labels, share)
        validation, test = (train_test_split(rest, test_size=share, random_state=seed,
                                             stratify=rest_labels if inner else None)
                            if len(rest) > 1 else (rest, []))
    for split, members in (("train", train), ("validation", validation), ("test", test)):
        for index in members:
            items[index]["split"] = split
    how = "stratified by label" if stratified else "at random"
    return (f"made new splits {how} with seed {seed}: {len(train)} train, {len(validation)} "
            f"validation, {len(test)} test")


def _can_stratify(labels: list, fraction: float) -> bool:
    """Stratifying needs labels, two items per class, and room for one of each class held out."""
    if not labels or any(label is None for label in labels):
        return False
    counts = Counter(labels)
    held_out = int(round(fraction * len(labels)))
    return min(counts.values()) >= 2 and held_out >= len(counts) and len(labels) - held_out >= len(counts)
