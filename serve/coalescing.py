"""Items of concurrent requests sent to the model server together.

Each HTTP request the front end forwards costs a round trip through Triton's HTTP server and its Python backend,
whatever the items it carries. When many clients send one image each, that fixed cost is most of the work, so the
front end keeps at most `in_flight` requests to a model outstanding and, while they run, gathers what arrives
into the next one (up to `max_items`, the model's largest batch). A lone client waits for nothing: with nothing
outstanding its items go at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class CoalescingQueue(Generic[Item, Result]):
    """`submit(items)` answers `send(items)`'s results for those items, in order, whoever they were sent with.

    `send` answers one result per item; when it raises, every request in that send gets the exception.
    """

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result]]], max_items: int, in_flight: int) -> None:
        if max_items < 1 or in_flight < 1:
            raise ValueError(f"max_items {max_items} and in_flight {in_flight} must be at least 1")
        self.send, self.max_items, self.in_flight = send, max_items, in_flight
        self.pending: deque[tuple[list[Item], asyncio.Future[list[Result]]]] = deque()
        self.senders: set[asyncio.Task[None]] = set()

    async def submit(self, items: list[Item]) -> list[Result]:
        """A request larger than `max_items` goes as several, each no larger."""
        chunks = [items[start : start + self.max_items] for start in range(0, len(items), self.max_items)]
        answers = await asyncio.gather(*(self._enqueue(chunk) for chunk in chunks))
        return [result for answer in answers for result in answer]

    def _enqueue(self, items: list[Item]) -> asyncio.Future[list[Result]]:
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self.pending.append((items, future))
        if len(self.senders) < self.in_flight:
            sender = asyncio.create_task(self._drain())
            self.senders.add(sender)
            sender.add_done_callback(self.senders.discard)
        return future

    async def _drain(self) -> None:
        while self.pending:
            batch = [self.pending.popleft()]
            count = len(batch[0][0])
            while self.pending and count + len(self.pending[0][0]) <= self.max_items:
                count += len(self.pending[0][0])
                batch.append(self.pending.popleft())
            try:
                results = await self.send([item for items, _ in batch for item in items])
            except Exception as err:  # noqa: BLE001  (each waiting request answers it; the queue goes on)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            offset = 0
            for items, future in batch:
                if not future.done():  # a request whose client went away is cancelled
                    future.set_result(results[offset : offset + len(items)])
                offset += len(items)
