"""Whether this node takes new tasks: each reason it refuses addTask (scheduling disabled, start task, reboot),
with the error code a client sees, and the messages of the hand-backs these reasons cause."""

from __future__ import annotations

from node_agent.errors import InputError

# Why a task was handed back, by the code of its taskHandedBack event.
HAND_BACK_MESSAGES = {
    "NodeAgentStopped": "the agent stopped while the task ran",
    "NodeSchedulingDisabled": "scheduling was disabled on the node with option requeue",
    "NodeRebooting": "the node is rebooting (option requeue)",
    "NodeReimaging": "the node is being reimaged (option requeue)",
}


class Admission:
    """The reasons, by name, that make ``check()`` refuse new work; the first one set is reported."""

    def __init__(self) -> None:
        self._blocks: dict[str, tuple[str, str]] = {}

    def block(self, reason: str, code: str, message: str) -> None:
        self._blocks[reason] = (code, message)

    def lift(self, reason: str) -> None:
        self._blocks.pop(reason, None)

    def is_blocked(self, reason: str) -> bool:
        return reason in self._blocks

    def check(self) -> None:
        for code, message in self._blocks.values():
            raise InputError(code, message)
