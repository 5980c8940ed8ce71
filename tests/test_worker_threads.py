"""huatuo_o1.worker_threads.Workers: results as items finish (errors included), and a stop starts nothing more."""

import threading

from huatuo_o1.worker_threads import Workers


def test_results_come_in_the_order_items_finish_with_their_errors():
    release = {item: threading.Event() for item in range(4)}

    def work(item):
        assert release[item].wait(30)
        if item == 2:
            raise ValueError("item 2 failed")
        return item * 10

    workers = Workers(work, list(range(4)), threads=4)
    finished = iter(workers)
    got = []
    for item in (3, 0, 2, 1):
        release[item].set()
        got.append(next(finished))
    assert [item for item, _ in got] == [3, 0, 2, 1]
    assert [result for item, result in got if item != 2] == [30, 0, 10]
    error = dict(got)[2]
    assert isinstance(error, ValueError) and str(error) == "item 2 failed"
    assert list(finished) == [] and workers.not_started() == 0


def test_once_stopped_no_thread_starts_another_item():
    started = []

    def work(item):
        started.append(item)
        workers.stop.set()  # as Ctrl-C would, while this item is in flight
        return item

    workers = Workers(work, list(range(5)), threads=1)
    assert next(iter(workers)) == (0, 0)
    for thread in workers._threads:
        thread.join(30)
    assert started == [0] and workers.not_started() == 4


def test_a_stop_event_given_is_the_one_obeyed_and_threads_never_outnumber_items():
    stop = threading.Event()
    workers = Workers(lambda item: item, [1, 2], threads=8, stop=stop)
    assert workers.stop is stop and len(workers._threads) == 2
    assert all(thread.daemon for thread in workers._threads)  # never joined: Ctrl-C never waits for a request
    assert sorted(workers) == [(1, 1), (2, 2)]
