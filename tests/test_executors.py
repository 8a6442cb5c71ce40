"""flowc.executors: the same results in item order on every executor, the shared value shipped
once per worker, per-item errors with their index, private scratch dirs, spec parsing.

The worker functions live at the top level of this module: the pool and Ray pickle them by
reference and import this module in their workers."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flowc.errors import UsageError, WorkerError
from flowc.executors import (
    LocalPoolExecutor,
    SerialExecutor,
    make_executor,
    progress_bar,
    worker_scratch,
)

# -- worker functions -----------------------------------------------------------------------------


def affine(shared: np.ndarray, item: int) -> np.ndarray:
    """A pure function of the shared array; a sleep that depends on the item scrambles the
    completion order so that result order is really tested."""
    time.sleep(0.002 * (item % 4))
    return shared * item + np.float32(item) / 3


def pid_of(shared: object, item: int) -> int:
    return os.getpid()


def fail_on_five(shared: object, item: int) -> int:
    if item == 5:
        raise ValueError(f"cannot score {item}")
    return item


class TwoArgError(Exception):
    """An exception that pickle cannot rebuild (its __init__ takes two arguments, args one)."""

    def __init__(self, node: str, op: str) -> None:
        super().__init__(f"{node}: {op}")


def raise_two_arg(shared: object, item: int) -> int:
    if item == 2:
        raise TwoArgError("layer.0", "matmul")
    return item


def marked_sleep(shared: str, item: int) -> int:
    """Item 0 fails at once; the others take a while and leave a marker when they ran."""
    if item == 0:
        raise RuntimeError("first item fails")
    time.sleep(0.1)
    Path(shared, f"ran-{item}").write_text("x")
    return item


def scratch_user(shared: object, item: int) -> tuple[int, str]:
    d = worker_scratch()
    (d / f"item-{item}").write_text(str(item))  # parallel items would collide on a shared dir
    return os.getpid(), str(d)


def torch_threads(shared: object, item: int) -> int:
    import torch

    return torch.get_num_threads()


class CountedArray:
    """An array that records every unpickling (one line with the pid) in a log file."""

    def __init__(self, data: np.ndarray, log: str) -> None:
        self.data, self.log = data, log

    def __reduce__(self):  # noqa: ANN204
        return (_rebuild_counted, (self.data, self.log))


def _rebuild_counted(data: np.ndarray, log: str) -> CountedArray:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return CountedArray(data, log)


def counted_sum(shared: CountedArray, item: int) -> tuple[int, float]:
    time.sleep(0.01)
    return os.getpid(), float(shared.data.sum()) + item


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_executor():
    """One local 2-CPU Ray cluster for the module (starting one takes ~5 s, hence the ray
    tests are slow); shut down after, so no Ray process outlives the tests."""
    import ray  # the ray extra is part of the test install (Makefile): no skip

    from flowc.executors import RayExecutor

    # Ray workers cannot import this module by name (pytest put tests/ on the driver's path
    # only), so its functions travel by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = RayExecutor(num_cpus=2)
    ex.connect()
    yield ex
    ex.close()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert not ray.is_initialized()


@pytest.fixture(params=["serial", "local", pytest.param("ray", marks=pytest.mark.slow)])
def executor(request):
    if request.param == "ray":
        yield request.getfixturevalue("ray_executor")
        return
    ex = SerialExecutor() if request.param == "serial" else LocalPoolExecutor(2)
    with ex:
        yield ex


# -- results and order ----------------------------------------------------------------------------


def test_results_in_item_order_match_direct_computation(executor):
    shared = np.linspace(-1.0, 1.0, 257, dtype=np.float32)
    items = [7, 3, 11, 0, 5, 2, 9, 1, 4, 10, 6, 8]
    calls: list[tuple[int, int]] = []
    out = executor.map(affine, items, shared=shared, progress=lambda d, t: calls.append((d, t)))
    assert len(out) == len(items)
    for item, got in zip(items, out, strict=True):
        expect = shared * item + np.float32(item) / 3
        assert got.dtype == expect.dtype and np.array_equal(got, expect)
    dones = [d for d, _ in calls]
    assert calls[0] == (0, 12) and calls[-1] == (12, 12) and dones == sorted(dones)
    assert {t for _, t in calls} == {12}


def test_shared_value_unpickled_once_per_worker_and_reused(executor, tmp_path):
    log = tmp_path / "loads.txt"
    log.touch()
    shared = CountedArray(np.arange(100, dtype=np.float64), str(log))
    bound = executor.bind(shared)
    first = bound.map(counted_sum, range(12))
    second = executor.map(counted_sum, range(12, 20), shared=shared)  # same object: same workers
    assert [v for _, v in first + second] == [4950.0 + i for i in range(20)]
    loads = log.read_text().split()
    if isinstance(executor, SerialExecutor):
        assert loads == []  # in-process: never pickled
        return
    pids = {p for p, _ in first + second}
    # every worker that ran items unpickled the value exactly once, none did per item
    assert sorted(loads) == sorted(str(p) for p in pids)
    assert len(loads) < 12
    executor.bind(shared)  # bind() always ships anew
    executor.map(counted_sum, range(4), shared=shared)
    assert len(log.read_text().split()) > len(loads)


def test_rebinding_closes_the_previous_handle(executor):
    old = executor.bind(np.zeros(3))
    executor.bind(np.ones(3))
    with pytest.raises(UsageError, match="closed"):
        old.map(pid_of, [1])
    with executor.bind(np.arange(3)) as bound:
        assert len(bound.map(pid_of, range(3))) == 3
    assert bound.closed


# -- errors ---------------------------------------------------------------------------------------


def test_worker_exception_keeps_type_and_names_the_item(executor):
    with pytest.raises(ValueError, match=r"^item 5: cannot score 5$"):
        executor.map(fail_on_five, range(10), shared=None)
    assert executor.map(fail_on_five, [1, 2], shared=None) == [1, 2]  # still usable


def test_failure_cancels_the_remaining_items(executor, tmp_path):
    items = list(range(24))
    with pytest.raises(RuntimeError, match="^item 0: first item fails"):
        executor.map(marked_sleep, items, shared=str(tmp_path))
    if not isinstance(executor, SerialExecutor):
        time.sleep(0.5)  # let items that were already running finish
    ran = len(list(tmp_path.glob("ran-*")))
    if isinstance(executor, SerialExecutor):
        assert ran == 0
    else:  # at most the items in flight when item 0 failed, far from all 23
        assert ran <= 8, ran


def test_unpicklable_exception_becomes_worker_error_with_index():
    with LocalPoolExecutor(2) as ex, pytest.raises(WorkerError, match=r"item 2: TwoArgError: "
                                                                      r"layer.0: matmul"):
        ex.map(raise_two_arg, range(4))


def test_local_function_is_refused_before_any_work():
    with LocalPoolExecutor(2) as ex, pytest.raises(UsageError, match="top level of a module"):
        ex.map(lambda s, x: x, [1])


def test_unpicklable_shared_value_is_refused_at_bind():
    import threading

    with LocalPoolExecutor(2) as ex, pytest.raises(UsageError, match="shared value .lock. cannot"):
        ex.bind(threading.Lock())


def test_spawn_start_method_gives_the_same_results():
    shared = np.arange(5, dtype=np.int64)
    with LocalPoolExecutor(2, start_method="spawn") as ex:
        assert ex.start_method == "spawn"
        out = ex.map(affine, [3, 1, 2], shared=shared)
    assert all(np.array_equal(o, shared * i + np.float32(i) / 3) for o, i in zip(out, [3, 1, 2],
                                                                                strict=True))
    with pytest.raises(UsageError, match="start method 'fork'"):
        LocalPoolExecutor(2, start_method="fork")


# -- worker environment ---------------------------------------------------------------------------


def test_scratch_dirs_are_private_per_worker_and_removed(executor):
    out = executor.map(scratch_user, range(16), shared=None)
    by_pid: dict[int, set[str]] = {}
    for pid, d in out:
        by_pid.setdefault(pid, set()).add(d)
    assert all(len(dirs) == 1 for dirs in by_pid.values())  # one dir per worker
    dirs = [next(iter(v)) for v in by_pid.values()]
    assert len(set(dirs)) == len(dirs)  # and no two workers share one
    files = sorted(f.name for d in dirs for f in Path(d).iterdir())
    assert files == sorted(f"item-{i}" for i in range(16))
    executor.bind(None)  # a new binding removes the old binding's scratch space
    assert not any(Path(d).exists() for d in dirs)


def test_worker_scratch_outside_an_executor_is_an_error():
    with pytest.raises(UsageError, match="outside a function run by a flowc executor"):
        worker_scratch()


def _wait_then_scratch(events, item):
    inside, release = events
    inside.set()
    release.wait(10)
    return worker_scratch().is_dir()


def test_a_serial_binding_is_seen_only_by_the_thread_running_the_item():
    """An item running in-process in one thread (as a sweep's head-start helper runs its
    chunks) does not make worker_scratch() valid in another thread."""
    import threading

    inside, release, out = threading.Event(), threading.Event(), []
    with SerialExecutor() as ex:
        helper = threading.Thread(
            target=lambda: out.append(ex.map(_wait_then_scratch, [0], shared=(inside, release))))
        helper.start()
        assert inside.wait(10)
        try:
            with pytest.raises(UsageError, match="outside a function run by a flowc executor"):
                worker_scratch()
        finally:
            release.set()
            helper.join()
    assert out == [[True]]


@pytest.mark.slow  # two workers import torch (~2 s each on an idle machine)
def test_pool_workers_run_torch_single_threaded():
    with LocalPoolExecutor(2) as ex:
        assert ex.map(torch_threads, range(4)) == [1, 1, 1, 1]


# -- choosing an executor -------------------------------------------------------------------------


def test_make_executor_parses_specs():
    from flowc.executors import RayExecutor, default_jobs

    assert isinstance(make_executor("serial", None), SerialExecutor)
    assert isinstance(make_executor(None, 1), SerialExecutor)
    assert isinstance(make_executor("local", 1), SerialExecutor)
    pool = make_executor("local", 3)
    assert isinstance(pool, LocalPoolExecutor) and pool.workers == 3
    default = make_executor(None, None)
    if default_jobs() > 1:
        assert isinstance(default, LocalPoolExecutor) and default.workers == default_jobs()
    ray_local = make_executor("ray", 2)
    assert isinstance(ray_local, RayExecutor) and (ray_local.address, ray_local.num_cpus) == (None, 2)
    assert make_executor("ray:auto", None).address == "auto"
    assert make_executor("ray:10.0.0.5:6379", None).address == "10.0.0.5:6379"
    assert make_executor("ray://head:10001", None).address == "ray://head:10001"
    for spec, jobs, msg in [("bogus", None, "expected serial, local"), ("local", 0, ">= 1"),
                            ("serial", 2, "contradicts"), ("ray:", None, "empty address"),
                            ("ray:auto", 4, "cluster's own CPUs")]:
        with pytest.raises(UsageError, match=msg):
            make_executor(spec, jobs)


@pytest.mark.slow
def test_ray_reads_a_lazy_iterable_as_its_workers_take_items(ray_executor):
    """At most WINDOW_PER_CPU tasks per CPU in flight: by the first result only about a
    window of items has been read, and every item still comes back once."""
    from flowc.executors.cluster import WINDOW_PER_CPU

    shared = np.arange(8, dtype=np.float32)
    pulled: list[int] = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield i

    stream = ray_executor.imap_unordered(affine, items(), shared=shared)
    first = next(stream)
    window = WINDOW_PER_CPU * ray_executor.workers
    assert window <= len(pulled) <= 2 * window < 40  # sent as results came back, not at once
    got = dict([first, *stream])
    assert sorted(got) == list(range(40)) and pulled == list(range(40))
    assert all(np.array_equal(got[i], shared * i + np.float32(i) / 3) for i in got)


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'flowc\[ray\]'"):
        make_executor("ray", None)


def test_cli_arguments_build_the_executor():
    import argparse

    from flowc.executors import add_executor_arguments, executor_from_args

    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    assert isinstance(executor_from_args(parser.parse_args(["-j", "1"])), SerialExecutor)
    ex = executor_from_args(parser.parse_args(["--executor", "local", "-j", "2"]))
    assert isinstance(ex, LocalPoolExecutor) and ex.workers == 2


def test_rich_progress_bar_shows_done_over_total():
    from rich.console import Console

    buf = io.StringIO()
    with progress_bar("scoring", console=Console(file=buf, width=120)) as bar:
        SerialExecutor().map(pid_of, range(7), progress=bar)
    text = buf.getvalue()
    assert "scoring" in text and "7/7" in text and "/s" in text
