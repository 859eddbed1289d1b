import asyncio

import pytest

from app.errors import QueueFull, QueueTimeout, ServiceDraining
from app.llm.scheduler import JobClass, Scheduler


async def _hold(scheduler, name, order, release, job_class=JobClass.interactive):
    async with scheduler.reserve(job_class):
        order.append(name)
        await release.wait()


async def test_one_runs_others_wait_in_order_and_the_queue_is_bounded():
    scheduler = Scheduler(max_waiting=2, max_wait_s=5)
    order = []
    release = asyncio.Event()
    first = asyncio.create_task(_hold(scheduler, "a", order, release))
    await asyncio.sleep(0.01)
    waiters = []
    for name in ("b", "c"):
        waiters.append(asyncio.create_task(_hold(scheduler, name, order, release)))
        await asyncio.sleep(0.01)
    try:
        assert scheduler.running == 1 and scheduler.waiting == 2
        with pytest.raises(QueueFull) as refused:
            scheduler.reserve()
        assert refused.value.retry_after >= 1
    finally:
        release.set()
        await asyncio.gather(first, *waiters)
    assert order == ["a", "b", "c"]
    assert scheduler.running == 0 and scheduler.waiting == 0


async def test_interactive_turns_go_before_background_ones_fifo_within_a_class():
    scheduler = Scheduler(max_waiting=10, max_wait_s=5, promote_after_s=60)
    order = []

    async def job(name, job_class):
        async with scheduler.reserve(job_class):
            order.append(name)

    release = asyncio.Event()
    holder = asyncio.create_task(_hold(scheduler, "holder", order, release))
    await asyncio.sleep(0.01)
    queued = []
    for name, job_class in [("bg1", JobClass.background), ("i1", JobClass.interactive),
                            ("bg2", JobClass.background), ("i2", JobClass.interactive)]:
        queued.append(asyncio.create_task(job(name, job_class)))
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(holder, *queued)
    assert order == ["holder", "i1", "i2", "bg1", "bg2"]


async def test_a_background_turn_that_waited_long_enough_is_promoted():
    scheduler = Scheduler(max_waiting=10, max_wait_s=5, promote_after_s=0.05)
    order = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(scheduler, "holder", order, release))
    await asyncio.sleep(0.01)
    done = asyncio.Event()
    done.set()
    background = asyncio.create_task(_hold(scheduler, "bg", order, done, JobClass.background))
    await asyncio.sleep(0.1)  # past promote_after_s
    interactive = asyncio.create_task(_hold(scheduler, "i", order, done))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(holder, background, interactive)
    assert order == ["holder", "bg", "i"]  # promoted, then first come first served


async def test_a_waiter_past_its_deadline_is_refused_and_leaves_the_queue():
    scheduler = Scheduler(max_waiting=4, max_wait_s=0.05)
    async with scheduler.reserve():
        with pytest.raises(QueueTimeout):
            async with scheduler.reserve():
                pass
        assert scheduler.waiting == 0
    assert scheduler.running == 0


async def test_a_cancelled_waiter_never_runs_and_the_next_one_does():
    scheduler = Scheduler(max_waiting=4, max_wait_s=5)
    ran = []

    async def request(name):
        async with scheduler.reserve():
            ran.append(name)

    async with scheduler.reserve():
        waiter = asyncio.create_task(request("cancelled"))
        await asyncio.sleep(0.01)
        later = asyncio.create_task(request("later"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
    await later
    assert ran == ["later"] and scheduler.waiting == 0 and scheduler.running == 0


async def test_a_granted_turn_given_up_before_entering_passes_the_model_on():
    scheduler = Scheduler(max_waiting=4, max_wait_s=5)
    turn = scheduler.reserve()  # granted at once: the model is idle
    assert scheduler.running == 1
    turn.cancel()
    assert scheduler.running == 0
    async with scheduler.reserve():
        assert scheduler.running == 1


async def test_an_idle_model_admits_even_with_no_waiting_room_and_draining_refuses():
    scheduler = Scheduler(max_waiting=0, max_wait_s=1)
    scheduler.reserve().cancel()
    assert scheduler.waiting == 0 and scheduler.running == 0
    scheduler.begin_drain()
    with pytest.raises(ServiceDraining):
        scheduler.reserve()
