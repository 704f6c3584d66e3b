"""Training batches built ahead of the step that needs them.

``Prefetcher`` builds the next ``depth`` batches (audio decoding, log-mel features, collation)
in a background thread while the current step runs on the accelerator, decoding each batch's
items on a few threads (soundfile and the STFT release the GIL).

Written here rather than ``DataLoader(num_workers=N)`` alone: worker processes cannot extract
features on the GPU and hold their own copy of the feature cache. With
``dataloader_num_workers`` they still do the decoding (no interpreter lock shared with the
training thread; the recipe hands their items in as ``items`` and keeps them in its cache), and
this thread collates. The batches and their order are a pure function of the indices handed
in, and anything random (SpecAugment) is left to the caller's thread, so a prefetched run
trains exactly like one built step by step (tests/engine/test_batch_features.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from engine.training.graphs import CAPTURE_LOCK

_END = object()


class Prefetcher:
    """Iterate ``(indices, batch)`` for ``batches`` (lists of item indices), each batch made by
    ``collate([fetch(i) for i in indices])`` (or from ``items``, an iterator of the batches'
    encoded items made elsewhere, e.g. by DataLoader worker processes); with ``depth`` 0 everything happens in the
    caller's thread when asked. An error building a batch is raised where that batch would
    have been consumed. Use as a context manager (or call ``close``) so that leaving the loop
    early stops the thread."""

    def __init__(self, fetch: Callable[[int], dict], collate: Callable[[list[dict]], dict],
                 batches: list[list[int]], *, items: Iterator[list[dict]] | None = None,
                 depth: int = 2, threads: int = 4, pin: bool = False):
        self.fetch, self.collate, self.batches, self.items = fetch, collate, batches, items
        self.depth, self.pin = max(0, depth), pin
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="lim-decode") if (
            threads > 1 and items is None) else None
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, self.depth))
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self.stream = torch.cuda.Stream() if pin else None

    def build(self, indices: list[int]) -> dict:
        if self.items is not None:  # encoded elsewhere (worker processes), in batch order
            items = next(self.items)
        elif self.pool is not None:
            items = list(self.pool.map(self.fetch, indices))
        else:
            items = [self.fetch(i) for i in indices]
        if not self.pin:
            return self.collate(items)
        # On a GPU: collation may extract features there (WhisperBase.extract_features_on), on a
        # stream of its own so that it overlaps the step, never while a CUDA graph is captured.
        with CAPTURE_LOCK, torch.cuda.stream(self.stream):
            batch = self.collate(items)
            # page-locked: the copy to the GPU runs asynchronously (non_blocking)
            return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _produce(self) -> None:
        for indices in self.batches:
            if self.closed.is_set():
                return
            try:
                item = (indices, self.build(indices))
            except BaseException as error:  # handed to the consumer, raised in its thread
                item = (indices, error)
            if not self._put(item) or isinstance(item[1], BaseException):
                return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[list[int], dict]]:
        if self.depth == 0:
            for indices in self.batches:
                yield indices, self.build(indices)
            return
        self.thread = threading.Thread(target=self._produce, name="lim-prefetch", daemon=True)
        self.thread.start()
        while True:
            item = self.queue.get()
            if item is _END:
                return
            indices, batch = item
            if isinstance(batch, BaseException):
                raise batch
            yield indices, batch

    def close(self) -> None:
        self.closed.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
