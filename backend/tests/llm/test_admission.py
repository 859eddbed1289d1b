import asyncio

import pytest

from app.errors import QueueFull, QueueTimeout
from app.llm.admission import Admission


async def test_one_runs_others_wait_in_order_and_the_queue_is_bounded():
    admission = Admission(max_waiting=2, max_wait_s=5)
    order = []
    release = asyncio.Event()

    async def request(name):
        async with admission.reserve():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(request("a"))
    await asyncio.sleep(0.01)
    waiters = []
    for name in ("b", "c"):
        waiters.append(asyncio.create_task(request(name)))
        await asyncio.sleep(0.01)
    try:
        assert admission.running == 1 and admission.waiting == 2
        with pytest.raises(QueueFull) as refused:
            admission.reserve()
        assert refused.value.retry_after >= 1
    finally:
        release.set()
        await asyncio.gather(first, *waiters)
    assert order == ["a", "b", "c"]
    assert admission.running == 0 and admission.waiting == 0


async def test_a_waiter_past_its_deadline_is_refused_and_leaves_the_queue():
    admission = Admission(max_waiting=4, max_wait_s=0.05)
    async with admission.reserve():
        with pytest.raises(QueueTimeout):
            async with admission.reserve():
                pass
        assert admission.waiting == 0


async def test_a_cancelled_waiter_never_runs():
    admission = Admission(max_waiting=4, max_wait_s=5)
    ran = []

    async def request():
        async with admission.reserve():
            ran.append(True)

    async with admission.reserve():
        waiter = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    assert ran == [] and admission.waiting == 0 and admission.running == 0


def test_an_idle_model_admits_even_with_no_waiting_room():
    admission = Admission(max_waiting=0, max_wait_s=1)
    ticket = admission.reserve()
    ticket.cancel()
    assert admission.waiting == 0
