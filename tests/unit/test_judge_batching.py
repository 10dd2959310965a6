"""Judge batches are formed when the backend has room (rayalign/judge/batching.py)."""

import asyncio

import pytest

from rayalign.judge.batching import Batcher


class Backend:
    """Takes ``seconds`` a batch whatever its size (as the load benchmark's function judge does); records batches."""

    def __init__(self, seconds: float = 0.2, fail_on: str = ""):
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[list[str]] = []

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [item.upper() for item in items]


def _batcher(backend, *, size=4, wait=0.02, slots=None) -> Batcher:
    return Batcher(backend, max_batch_size=size, batch_wait_s=wait, slots=slots or asyncio.Semaphore(1))


def test_requests_arriving_during_a_batch_form_one_full_batch_after_it():
    """serve.batch would freeze each trickle into its own small batch while the first ran; here the four
    that arrive one by one during the first batch go together when it ends."""

    async def main():
        backend = Backend(seconds=0.3)
        batcher = _batcher(backend)
        first = asyncio.create_task(batcher("a"))
        await asyncio.sleep(0.05)
        later = []
        for name in "bcde":
            later.append(asyncio.create_task(batcher(name)))
            await asyncio.sleep(0.04)
        return await first, await asyncio.gather(*later), backend.batches, batcher.sizes

    first, later, batches, sizes = asyncio.run(main())
    assert (first, later) == ("A", ["B", "C", "D", "E"])
    assert batches == [["a"], ["b", "c", "d", "e"]]
    assert sizes == {1: 1, 4: 1}


def test_batch_seconds_add_up_the_backends_own_time():
    async def main():
        batcher = _batcher(Backend(seconds=0.1), size=2)
        await asyncio.gather(*(batcher(str(i)) for i in range(4)))  # two batches of 2, 0.1 s each
        return batcher.seconds

    assert 0.2 <= asyncio.run(main()) < 0.35


def test_a_full_queue_splits_into_batches_of_max_size_in_order():
    async def main():
        backend = Backend(seconds=0.01)
        batcher = _batcher(backend, size=3)
        results = await asyncio.gather(*(batcher(str(i)) for i in range(7)))
        return results, backend.batches

    results, batches = asyncio.run(main())
    assert results == [str(i) for i in range(7)]
    assert batches == [["0", "1", "2"], ["3", "4", "5"], ["6"]]


def test_a_caller_that_gives_up_while_waiting_is_never_computed():
    async def main():
        backend = Backend(seconds=0.3)
        batcher = _batcher(backend)
        busy = asyncio.create_task(batcher("a"))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher("gone"), 0.05)  # waits behind "a", then its caller leaves
        kept = asyncio.create_task(batcher("b"))
        return await busy, await kept, backend.batches, batcher.dropped

    busy, kept, batches, dropped = asyncio.run(main())
    assert (busy, kept) == ("A", "B")
    assert batches == [["a"], ["b"]] and dropped == 1


def test_shared_slots_make_two_batchers_take_turns_and_more_slots_run_batches_together():
    async def main(slots: int):
        backend = Backend(seconds=0.2)
        shared = asyncio.Semaphore(slots)
        score, classify = _batcher(backend, slots=shared), _batcher(backend, slots=shared)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(score("s"), classify("c"))
        return loop.time() - start

    assert asyncio.run(main(1)) >= 0.4  # one after the other on one engine
    assert asyncio.run(main(2)) < 0.35  # together


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    async def main():
        backend = Backend(seconds=0.01, fail_on="x")
        batcher = _batcher(backend, size=2)
        first = await asyncio.gather(batcher("x"), batcher("y"), return_exceptions=True)
        then = await batcher("z")
        return first, then

    first, then = asyncio.run(main())
    assert [type(r) for r in first] == [ValueError, ValueError] and "bad item x" in str(first[0])
    assert then == "Z"


def test_a_batch_waits_at_most_batch_wait_s_to_fill():
    async def main():
        backend = Backend(seconds=0.0)
        batcher = _batcher(backend, size=8, wait=0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher("alone")
        return loop.time() - start, backend.batches

    took, batches = asyncio.run(main())
    assert batches == [["alone"]] and 0.09 <= took < 0.5
