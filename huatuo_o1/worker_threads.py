"""Slow calls (API requests) for many items at once, each result handed to the caller's thread as it finishes.

The data stages (huatuo_o1/llm_jobs.py) and evaluation/eval.py send one request per item from a few threads.
The threads are daemon threads, never joined: on Ctrl-C the caller's thread leaves at once, and a request in
flight ends with the process, unsaved. concurrent.futures' ThreadPoolExecutor cannot do this: the interpreter
waits for its threads at exit, so a request that takes a minute would hold Ctrl-C for a minute.
"""

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Workers:
    """work(item) for each item on up to `threads` daemon threads, started when iteration starts; iterating yields
    (item, result) in the order the items finish, result being what work returned or the exception it raised.

    Once `stop` is set (the one given, or the one made here) no thread starts another item; `not_started()` counts
    the items left. The caller stops iterating then: the items not started never finish.
    """

    def __init__(self, work: Callable[[Any], Any], items: list, threads: int, stop: threading.Event | None = None):
        self.stop = stop if stop is not None else threading.Event()
        self._todo, self._finished = queue.SimpleQueue(), queue.SimpleQueue()
        for item in items:
            self._todo.put(item)
        self._total = len(items)
        self._threads = [
            threading.Thread(target=self._work, args=(work,), daemon=True) for _ in range(min(threads, len(items)))
        ]

    def _work(self, work):
        while not self.stop.is_set():
            try:
                item = self._todo.get_nowait()
            except queue.Empty:
                return
            try:
                result = work(item)
            except BaseException as error:  # the caller's thread decides what an error means
                result = error
            self._finished.put((item, result))

    def not_started(self) -> int:
        return self._todo.qsize()

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for thread in self._threads:
            thread.start()
        received = 0
        while received < self._total:
            try:
                finished = self._finished.get(timeout=0.5)  # a short wait: Ctrl-C is seen at once
            except queue.Empty:
                continue
            received += 1
            yield finished
