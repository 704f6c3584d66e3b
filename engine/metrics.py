"""Evaluation metrics: WER/CER (jiwer) for speech, accuracy/macro-F1/ROC-AUC for labels."""

from __future__ import annotations

import numpy as np

# name -> True when a larger value is better
METRIC_DIRECTION = {"wer": False, "cer": False, "accuracy": True, "macro_f1": True, "roc_auc": True,
                    "loss": False}


def normalize_transcript(text: str) -> str:
    """Text as speech-recognition scores compare it: Whisper's basic normaliser (lowercase,
    punctuation and symbols dropped, spaces collapsed), as Whisper's own evaluations do. A
    pretrained Whisper writes "My friend, Felix." where a dataset says "my friend felix":
    counting casing and commas as word errors would measure formatting, not recognition."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return " ".join(BasicTextNormalizer()(text).split())


def speech_metrics(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """WER and CER over normalised transcripts (``normalize_transcript``)."""
    import jiwer

    # jiwer refuses empty references; an empty reference scores against a placeholder word.
    refs = [normalize_transcript(ref) or "<empty>" for ref in references]
    hyps = [normalize_transcript(hyp) for hyp in hypotheses]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def classification_metrics(labels: list[int], probabilities: np.ndarray) -> dict[str, float | None]:
    """``probabilities``: (N, C) class probabilities; ``labels``: N true class indices."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    labels_array = np.asarray(labels)
    # float64 rows summing to 1: a float32 softmax sums to 1 within ~1e-7, which scikit-learn's
    # log_loss finds "not summing to one" (a warning per evaluation, and its own renormalising)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    num_classes = probabilities.shape[1]
    result = {
        "accuracy": float(accuracy_score(labels_array, predicted)),
        "macro_f1": float(f1_score(labels_array, predicted, average="macro",
                                   labels=list(range(num_classes)), zero_division=0)),
        "roc_auc": None,
        # cross-entropy of the predicted probabilities: what training minimises, on held-out items
        "loss": float(log_loss(labels_array, probabilities, labels=list(range(num_classes)))),
    }
    try:  # undefined when a class is missing from the references
        if num_classes == 2:
            result["roc_auc"] = float(roc_auc_score(labels_array, probabilities[:, 1]))
        else:
            result["roc_auc"] = float(roc_auc_score(labels_array, probabilities, multi_class="ovr",
                                                    labels=list(range(num_classes))))
    except ValueError:
        pass
    return result


def item_speech_errors(reference: str, hypothesis: str) -> dict[str, float]:
    """WER and CER of one transcript (for the per-example table), normalised alike, with the
    word ``errors`` (substitutions + deletions + insertions) and reference ``words`` behind
    the WER: summed over items they give the corpus WER ``speech_metrics`` reports, which a
    study's per-item bootstrap resamples (engine/significance.py)."""
    import jiwer

    ref, hyp = normalize_transcript(reference) or "<empty>", normalize_transcript(hypothesis)
    words = jiwer.process_words(ref, hyp)
    errors = words.substitutions + words.deletions + words.insertions
    return {"wer": float(jiwer.wer(ref, hyp)), "cer": float(jiwer.cer(ref, hyp)),
            "errors": int(errors), "words": int(words.hits + words.substitutions + words.deletions)}


def speech_item_counts(row: dict) -> tuple[int, int]:
    """(word errors, reference words) of one per-example row; rows written before they were
    stored get them from the reference text and the item's WER (errors = WER × words, exact
    as both are whole numbers)."""
    if row.get("errors") is not None and row.get("words") is not None:
        return int(row["errors"]), int(row["words"])
    words = len((normalize_transcript(row.get("reference") or "") or "<empty>").split())
    return round(float(row["wer"]) * words), words


def confusion_counts(labels: list[str], rows: list[dict]) -> list[list[int]]:
    """``matrix[true][predicted]`` counts over per-example rows with label names."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for row in rows:
        if row["reference"] in index and row["prediction"] in index:
            matrix[index[row["reference"]]][index[row["prediction"]]] += 1
    return matrix
