"""The front end's coalescing of concurrent requests into shared model-server requests."""

import asyncio

import pytest

from serve.coalescing import CoalescingQueue


class SlowDoubler:
    """A model server stand-in: doubles each item, records what each send carried, takes `delay` per send."""

    def __init__(self, delay: float = 0.1, fail_on: int | None = None) -> None:
        self.sends: list[list[int]] = []
        self.delay, self.fail_on = delay, fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.sends.append(items)
        await asyncio.sleep(self.delay)
        if self.fail_on in items:
            raise RuntimeError(f"refused {self.fail_on}")
        return [2 * i for i in items]


def run_requests(queue: CoalescingQueue, requests: list[list[int]]) -> list:
    """Request i arrives 10 ms after request i - 1 (a send takes 100 ms); each answer or exception, in order."""

    async def arrive(request: list[int], at: float) -> list[int]:
        await asyncio.sleep(at)
        return await queue.submit(request)

    async def main():
        return await asyncio.gather(*(arrive(r, 0.01 * i) for i, r in enumerate(requests)), return_exceptions=True)

    return asyncio.run(main())


def test_requests_arriving_while_one_is_in_flight_share_the_next_send():
    server = SlowDoubler()
    answers = run_requests(CoalescingQueue(server, max_items=64, in_flight=1), [[1], [2], [3], [4]])
    assert answers == [[2], [4], [6], [8]]
    assert server.sends == [[1], [2, 3, 4]]


def test_a_lone_request_is_sent_at_once_on_its_own():
    server = SlowDoubler()
    assert run_requests(CoalescingQueue(server, max_items=64, in_flight=2), [[5, 6]]) == [[10, 12]]
    assert server.sends == [[5, 6]]


def test_no_send_carries_more_than_max_items_and_a_large_request_is_split():
    server = SlowDoubler()
    answers = run_requests(CoalescingQueue(server, max_items=3, in_flight=1), [[0], list(range(1, 8)), [8, 9]])
    assert answers == [[0], [2 * i for i in range(1, 8)], [16, 18]]
    assert max(len(send) for send in server.sends) == 3
    assert sorted(i for send in server.sends for i in send) == list(range(10))


def test_up_to_in_flight_sends_run_at_once():
    server = SlowDoubler()
    run_requests(CoalescingQueue(server, max_items=64, in_flight=2), [[1], [2], [3], [4]])
    assert server.sends == [[1], [2], [3, 4]]


def test_a_failed_send_fails_only_the_requests_it_carried_and_the_queue_goes_on():
    server = SlowDoubler(fail_on=2)
    answers = run_requests(CoalescingQueue(server, max_items=2, in_flight=1), [[1], [2], [3], [4], [5]])
    assert answers[0] == [2]
    assert [str(a) for a in answers[1:3]] == ["refused 2", "refused 2"]
    assert answers[3:] == [[8], [10]]


def test_a_queue_needs_room_for_one_item_and_one_send():
    with pytest.raises(ValueError, match="at least 1"):
        CoalescingQueue(SlowDoubler(), max_items=0, in_flight=1)
