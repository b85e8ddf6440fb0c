"""Adaptive batching of concurrent requests inside one worker.

Requests put their rows on a queue and wait; one consumer takes everything that is waiting (up to
``max_batch_rows``), runs one forward pass, and hands each request its slice of the scores. While a
pass runs, new requests gather for the next one, so the batch size follows the load by itself: one
row at a time when requests are sparse, tens of rows under load, with no timer that adds latency
and no request dropped below capacity. The pass runs on the event loop (``inline``, for forwards
made of many small torch ops, which in a second thread would fight the loop for the GIL) or in
one worker thread (long kernels that release the GIL, such as convolutions). Large requests are cut into pieces of at
most ``max_batch_rows``, so that a 10,000-row request does not hold up single rows behind it.

Why not BentoML's own ``@bentoml.api(batchable=True)``: it batches an endpoint whose only argument
and return value are arrays aligned on one dimension. ``/score`` takes instances of several kinds
and answers with the threshold, alpha and model version around the scores, so its batching is of
the prepared rows behind the endpoint, which BentoML's dispatcher does not expose. Scores do not
depend on the batch (fixed-size forward blocks, fixed noise), so batching never changes a result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["MicroBatcher", "Overloaded"]


class Overloaded(Exception):
    """More rows waiting than ``max_queued_rows``: the worker is past its capacity."""


class MicroBatcher:
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch_rows: int = 1024,
                 max_queued_rows: int = 1_000_000, on_batch: Callable[[int], None] | None = None,
                 inline: bool = False) -> None:
        self._fn = fn
        self.inline = inline
        self.max_batch_rows = int(max_batch_rows)
        self.max_queued_rows = int(max_queued_rows)
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="anomaly-vae-score")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.queued_rows = 0

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # a new event loop (a test client's) gets its own queue and consumer
        self._loop, self._queue = loop, asyncio.Queue()
        self._task = loop.create_task(self._run())
        self.queued_rows = 0

    async def score(self, x: np.ndarray) -> np.ndarray:
        """Scores of the rows of ``x``, computed together with other requests' rows."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        n = len(x)
        if self.queued_rows + n > self.max_queued_rows:
            raise Overloaded(f"{self.queued_rows} rows are waiting to be scored (limit {self.max_queued_rows})")
        assert self._queue is not None
        futures = []
        for start in range(0, n, self.max_batch_rows):
            fut: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait((x[start:start + self.max_batch_rows], fut))
            futures.append(fut)
        self.queued_rows += n
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _run(self) -> None:
        assert self._queue is not None and self._loop is not None
        queue, loop = self._queue, self._loop
        while True:
            items = [await queue.get()]
            await asyncio.sleep(0)  # let the requests that are ready to run put their rows in first
            rows = len(items[0][0])
            while rows < self.max_batch_rows and not queue.empty():
                items.append(queue.get_nowait())
                rows += len(items[-1][0])
            live = [(x, f) for x, f in items if not f.done()]  # a request whose client went away is skipped
            try:
                if live:
                    x = live[0][0] if len(live) == 1 else np.concatenate([x for x, _ in live])
                    try:
                        if self.inline:
                            scores = self._fn(x)
                        else:
                            scores = await loop.run_in_executor(self._executor, self._fn, x)
                    except Exception as err:  # the requests of this batch fail; the consumer goes on
                        for _, f in live:
                            if not f.done():
                                f.set_exception(err)
                        continue
                    if self._on_batch is not None:
                        self._on_batch(len(x))
                    start = 0
                    for part, f in live:
                        if not f.done():
                            f.set_result(scores[start:start + len(part)])
                        start += len(part)
            finally:
                self.queued_rows -= rows

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
