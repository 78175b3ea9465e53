"""Coalescing: calls that arrive while an answer is being worked out wait, and share the next one.

In a drop storm thousands of requests a second each need the same kind of answer from elsewhere
(booking: "did this Idempotency-Key already get a 201?" from PostgreSQL; the gateway: the same
question from booking). One round trip per batch of waiting questions, instead of one per
question, is what keeps such a question cheap. `Coalescer` holds the waiting questions and one
drain task (started by the first question, ended when nobody waits); `answer` (given, or a
subclass's `serve`) turns a batch of questions into their answers, in order.

A waiter that goes away (its caller cancelled) cancels only its own future: the batch and the
other waiters go on. A batch whose answer fails gets the exception, each of its waiters; the
questions waiting behind it are served next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class Coalescer(Generic[Q, R]):
    def __init__(self, answer: Callable[[list[Q]], Awaitable[Sequence[R]]] | None = None, *, max_batch: int = 500):
        self.answer = answer
        self.max_batch = max_batch
        self.queue: list[tuple[Q, asyncio.Future[R]]] = []
        self.running = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def ask(self, question: Q) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.queue.append((question, fut))
        if not self.running:
            self.running = True
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)  # the loop only keeps weak references to tasks
            task.add_done_callback(self._tasks.discard)
        # No shield: a waiter cancelled cancels only its own future, which the drain then skips.
        return await fut

    async def _drain(self) -> None:
        try:
            while self.queue:
                await self.serve()
        finally:
            self.running = False

    async def serve(self) -> None:
        """Answer batches while questions wait (a subclass may hold a resource across them)."""
        assert self.answer is not None, "a Coalescer needs `answer` or its own `serve`"
        while self.queue:
            batch = self.take()
            try:
                answers = await self.answer([q for q, _ in batch])
            except Exception as exc:
                self.fail(batch, exc)
                continue
            self.settle(batch, answers)

    def take(self) -> list[tuple[Q, asyncio.Future[R]]]:
        """The next batch of waiting questions, oldest first."""
        batch = self.queue[: self.max_batch]
        del self.queue[: self.max_batch]
        return batch

    @staticmethod
    def settle(batch: list[tuple[Q, asyncio.Future[R]]], answers: Sequence[R]) -> None:
        for (_, fut), answer in zip(batch, answers, strict=True):
            if not fut.done():  # a waiter gone is skipped
                fut.set_result(answer)

    @staticmethod
    def fail(batch: list[tuple[Q, asyncio.Future[R]]], exc: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
