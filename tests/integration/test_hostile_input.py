"""Property-based hostile input through a real broker: generated and mutated commands, job documents and raw
payloads thrown at one running agent. Each gets a well-formed reply or is ignored, the agent stays up and
answers a good command after each, no input reaches its catch-all error path, and no file appears outside the
node root. Bounded (a fixed number of examples, derandomized) so CI sees the same inputs every run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.brokers import BrokerHandle
from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode, NodePool, fresh_prefix
from node_agent.wire.commands import Reply
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Task
from tests import hostile
from tests.conftest import SUMMARY
from tests.raw_mqtt import RawMqtt

T = TypeVar("T")
TIMEOUT_S = 20.0
EXAMPLES = 200  # the commands phase; the two below at 80, tasks at 60: 420 inputs
JOB_EXAMPLES = 80
TASK_EXAMPLES = 60
# The catch-all paths: reaching one means some input got past validation at the edge.
AGENT_ERRORS = ("command.failed", "task.agent_error", "prep.agent_error")
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class Agent:
    """One agent, its broker client and a raw MQTT client, run on an event loop of their own (hypothesis calls
    the property synchronously, once per example)."""

    def __init__(self, broker: BrokerHandle, base: Path) -> None:
        self.broker = broker
        self.base = base
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile-agent", daemon=True)
        self.sent = 0
        self.log_offset = 0

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 7 * TIMEOUT_S) -> T:  # over any wait inside
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    async def open(self) -> None:
        prefix = fresh_prefix()
        self.client = BatchClient(self.broker.url, topic_prefix=prefix, command_timeout_s=TIMEOUT_S)
        await self.client.__aenter__()
        self.pool = NodePool(self.broker, self.client, self.base)
        fast = {"NODE_AGENT_JOB_WAIT": "PT0.1S", "NODE_AGENT_RETENTION_SWEEP_INTERVAL": "PT0.2S"}
        [self.node] = await self.pool(env=fast, task_slots=4)
        await self.client.create_job(Job(id="seed"))
        await self.client.add_task("seed", TaskSpec(id="seed", command_line="/bin/sh -c 'echo seed'"))
        await self.client.wait_for_tasks("seed", timeout_s=TIMEOUT_S)  # hostile.SEED_FILE exists from now
        self.raw = RawMqtt(self.broker, prefix)
        await self.raw.__aenter__()
        self.commands = f"{prefix}/nodes/{self.node.node_id}/commands"

    async def close(self) -> None:
        await self.client.delete_job("seed", timeout_s=TIMEOUT_S)  # its directories and task users go too
        await self.raw.__aexit__(None, None, None)
        await self.pool.close()
        await self.client.__aexit__(None, None, None)

    def request_id(self) -> str:
        self.sent += 1
        return f"r{self.sent}-{uuid.uuid4().hex[:8]}"

    async def send(self, payload: bytes, expected_request_id: str | None) -> None:
        """Publish, wait for the reply if one is due, then prove the agent still answers a good command."""
        await self.raw.publish(self.commands, payload)
        if expected_request_id is not None:
            [reply] = await self.raw.wait_until(lambda: self.raw.replies(expected_request_id), TIMEOUT_S)
            assert_well_formed(reply, expected_request_id)
        await self.still_answers()

    async def all_seed_tasks_completed(self) -> None:
        """Nothing accepted is left half-done: every task the agent took reaches completed, or was handed back to
        the scheduler (active, on no node): a generated ``disableScheduling`` requeues what runs at that moment."""

        def settled(task: Task) -> bool:
            handed_back = task.state == "active" and task.node_info is None and task.execution_info.requeue_count > 0
            return task.state == "completed" or handed_back

        def done() -> bool:
            return all(settled(task) for (job_id, _), task in self.client.view.tasks.items() if job_id == "seed")

        # Every task starts its own supervisor (ADR 0011): on a loaded machine ~50 of them take a while.
        await self.client.wait_until(done, 6 * TIMEOUT_S)

    async def publish_job(self, job_id: str, payload: bytes) -> None:
        await self.raw.publish(f"{self.raw.prefix}/jobs/{job_id}", payload, retain=True)
        await self.still_answers()

    async def still_answers(self) -> None:
        probe = self.request_id()
        await self.raw.publish(self.commands, self.raw.command(self.node.node_id, {"type": "listFiles"}, probe))
        [reply] = await self.raw.wait_until(lambda: self.raw.replies(probe), TIMEOUT_S)
        assert reply["ok"] is True, reply
        assert self.new_log_lines(AGENT_ERRORS) == [], "an input reached a catch-all error path"

    def new_log_lines(self, events: tuple[str, ...]) -> list[str]:
        """Lines of the agent's log with one of these events since the last call (read per example, so
        hypothesis can shrink the input that caused one)."""
        with self.node.log_file.open("rb") as log:
            log.seek(self.log_offset)
            text = log.read()
        self.log_offset += len(text)
        lines = text.decode(errors="replace").splitlines()
        return [line for line in lines if any(f'"event": "{event}"' in line for event in events)]


def assert_well_formed(reply: dict[str, Any], request_id: str) -> None:
    parsed = Reply.model_validate(reply)
    assert parsed.request_id == request_id
    if parsed.ok:
        assert parsed.error is None
    else:
        assert parsed.error is not None and parsed.error.code.isalpha() and parsed.error.message.strip()


def outside_root(node: FakeNode) -> set[str]:
    """Every path under the node's folder except the node root and the agent's own state directory."""
    folder = node.agent.base
    skip = {node.agent.root, node.agent.state_dir}
    return {str(path) for path in folder.rglob("*") if not any(path.is_relative_to(s) for s in skip)}


@pytest.fixture(scope="module")
def agent(mqtt_broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    base = tmp_path_factory.mktemp("hostile")
    harness = Agent(mqtt_broker, base)
    harness.thread.start()
    try:
        harness.run(harness.open())
        yield harness
    finally:
        try:
            harness.run(harness.close())
        finally:
            harness.loop.call_soon_threadsafe(harness.loop.stop)
            harness.thread.join(TIMEOUT_S)
            harness.loop.close()


request_ids = st.one_of(st.just("fresh"), st.just("missing"), hostile.json_values, hostile.texts)
reply_tos = st.one_of(st.just("ours"), st.just("missing"), st.sampled_from(hostile.HOSTILE_TEXT), hostile.json_values)


def envelope(agent: Agent, request_id: Any, reply_to: Any) -> tuple[dict[str, Any], str | None]:
    """The requestId/replyTo part of a command, and the requestId a reply is due for (None: none is)."""
    fields: dict[str, Any] = {}
    if request_id == "fresh":
        request_id = agent.request_id()
    elif isinstance(request_id, str) and request_id != "missing":
        request_id = f"{request_id}{agent.request_id()}"  # unique, so an earlier reply is never mistaken for it
    if request_id != "missing":
        fields["requestId"] = request_id
    if reply_to == "ours":
        reply_to = agent.raw.reply_topic
    if reply_to != "missing":
        fields["replyTo"] = reply_to
    due = isinstance(request_id, str) and request_id != "missing" and reply_to == agent.raw.reply_topic
    return fields, request_id if due else None


@pytest.mark.timeout(360)  # the inputs (about 30 s alone) and the accepted tasks' wait (up to 120 s) on a busy machine
def test_hostile_commands_get_a_well_formed_reply_or_none_and_the_agent_stays_up(
    agent: Agent, record_property: Callable[[str, object], None]
) -> None:
    before = outside_root(agent.node)
    tried = {"commands": 0, "tasks": 0, "raw": 0, "jobs": 0}

    @SETTINGS
    @given(command=hostile.mutated(hostile.commands), request_id=request_ids, reply_to=reply_tos)
    def command(command: dict[str, Any], request_id: Any, reply_to: Any) -> None:
        fields, due = envelope(agent, request_id, reply_to)
        tried["commands"] += 1
        agent.run(agent.send(json.dumps({**command, **fields}).encode(), due))

    @settings(SETTINGS, max_examples=JOB_EXAMPLES)
    @given(data=st.data())
    def raw(data: st.DataObject) -> None:
        fields, _ = envelope(agent, "fresh", "ours")
        payload = data.draw(hostile.raw_payload({"type": "addTask", **fields}))
        tried["raw"] += 1
        agent.run(agent.send(payload, None))  # a reply may or may not be due: only liveness is checked

    @settings(SETTINGS, max_examples=JOB_EXAMPLES)
    @given(job=hostile.mutated(hostile.jobs), topic_id=hostile.ids)
    def job_document(job: dict[str, Any], topic_id: str) -> None:
        tried["jobs"] += 1
        # A topic with a wildcard, a control character or a non-character would get our client disconnected
        # by the broker (MQTT forbids them); such ids still reach the agent inside the payload.
        publishable = "".join(c for c in topic_id if " " <= c <= "~" and c not in "+#") or "empty"
        publishable = "not-seed" if publishable == "seed" else publishable  # the tasks' job stays as it is
        payload = json.dumps({**job, "id": job.get("id", publishable)}).encode()
        agent.run(agent.publish_job(publishable, payload))

    @settings(SETTINGS, max_examples=TASK_EXAMPLES)
    @given(task=hostile.valid_tasks)
    def valid_task(task: dict[str, Any]) -> None:
        fields, due = envelope(agent, "fresh", "ours")
        tried["tasks"] += 1
        agent.run(agent.send(json.dumps({"type": "addTask", "jobId": "seed", "task": task, **fields}).encode(), due))

    command()
    agent.run(agent.send(agent.raw.command("", {"type": "enableScheduling"}, agent.request_id()), None))
    valid_task()
    raw()
    job_document()
    agent.run(agent.all_seed_tasks_completed())

    node = agent.node
    assert node.process is not None and node.process.returncode is None
    log = node.log_file.read_text()
    assert not [event for event in AGENT_ERRORS if f'"event": "{event}"' in log], "a catch-all error path was reached"
    assert "Traceback" not in log
    assert outside_root(node) == before
    ran = [task for (job_id, _), task in agent.client.view.tasks.items() if job_id == "seed"]
    summary = f"hostile input: {sum(tried.values())} inputs tried ({tried}); {len(ran)} tasks accepted and run"
    record_property(SUMMARY, summary)  # printed at the end of the run (tests/conftest.py)
    assert tried["commands"] >= EXAMPLES // 2
