"""NodeState publications: a change of state is published at once; a burst of running-count changes is merged."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from node_agent.agent.node_state import LOAD_INTERVAL_S, NodeStateReporter
from node_agent.agent.publisher import Publisher
from node_agent.wire.status import NodeState, NodeStateName

SLOTS = 8


class Recorder:
    """Stands in for the Publisher: keeps every NodeState and says when one arrives."""

    node_id = "n1"
    pool_id = "p1"

    def __init__(self) -> None:
        self.states: list[NodeState] = []
        self.arrived = asyncio.Event()

    def node_state(self, state: NodeState) -> None:
        self.states.append(state)
        self.arrived.set()

    async def next(self) -> NodeState:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), timeout=5.0)
        return self.states[-1]


def reporter(recorder: Recorder) -> NodeStateReporter:
    return NodeStateReporter(cast(Publisher, cast(Any, recorder)), lambda: None, SLOTS, "boot-1")


async def test_a_burst_of_load_changes_gives_few_node_states_and_the_last_is_right() -> None:
    recorder = Recorder()
    node = reporter(recorder)
    node.publish()  # on connect: idle
    counts = [1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 3, 4, 5]  # tasks start and end while others run
    for running in counts:
        node.update(running)
    # idle -> running is published at once; the 16 count changes after it inside one interval make one more
    assert [s.running_task_slots_count for s in recorder.states] == [0, 1]
    last = await recorder.next()
    assert last.state == NodeStateName.RUNNING and last.running_task_slots_count == counts[-1]
    assert len(recorder.states) == 3


async def test_a_change_of_state_is_published_at_once_with_the_count_of_that_moment() -> None:
    recorder = Recorder()
    node = reporter(recorder)
    node.publish()
    node.update(1)
    node.update(2)  # merged, waiting
    node.update(0)  # running -> idle: at once, and the waiting count change is not published after it
    assert [(s.state, s.running_task_slots_count) for s in recorder.states] == [
        (NodeStateName.IDLE, 0),
        (NodeStateName.RUNNING, 1),
        (NodeStateName.IDLE, 0),
    ]
    node.scheduling = "disabled"
    node.update()
    assert recorder.states[-1].scheduling_state == "disabled"
    node.update(1)
    node.update(2)
    node.publish(NodeStateName.OFFLINE)  # a stop: nothing merged earlier may follow the offline state
    await asyncio.sleep(2 * LOAD_INTERVAL_S)  # the merge interval passes: nothing else is published
    assert recorder.states[-1].state == NodeStateName.OFFLINE


async def test_load_changes_further_apart_than_the_interval_are_each_published() -> None:
    recorder = Recorder()
    node = reporter(recorder)
    node.update(1)
    node.update(2)
    assert (await recorder.next()).running_task_slots_count == 2
    await asyncio.sleep(LOAD_INTERVAL_S)  # quiet for a whole interval: the next change goes out at once
    node.update(3)
    assert recorder.states[-1].running_task_slots_count == 3
    assert [s.running_task_slots_count for s in recorder.states] == [1, 2, 3]
