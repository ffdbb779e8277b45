"""Topic names of PROTOCOL.md under one prefix, and parsing of incoming topics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str

    def node_state(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/state"

    def node_commands(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/commands"

    def node_events(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/events"

    def replies(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/replies"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}/jobs/{job_id}"

    def task(self, job_id: str, task_id: str) -> str:
        return f"{self.prefix}/jobs/{job_id}/tasks/{task_id}"

    def job_node(self, job_id: str, node_id: str) -> str:
        return f"{self.prefix}/jobs/{job_id}/nodes/{node_id}"

    def pool(self, pool_id: str) -> str:
        return f"{self.prefix}/pools/{pool_id}"

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}/jobs/+"

    def levels(self, topic: str) -> list[str] | None:
        """The levels below the prefix, or None for a topic outside it."""
        head = self.prefix + "/"
        return topic[len(head) :].split("/") if topic.startswith(head) else None
