"""The agent's exception tree; each branch is handled in one place.

AgentError
├── InputError       bad command/id/path -> error reply, state unchanged   (agent/dispatch.py)
├── TaskFailure      failureInfo of one attempt                             (agent/attempts.py)
│   └── StagingFailed  a resource file could not be staged: never retried     (staging/stage.py)
├── ConfigError      bad settings -> one-line reason, exit 2                (cli.py)
└── StoreCorrupt     unreadable durable state -> exit 3                     (cli.py)

BrokerUnavailable    a throw-away broker for a demo or a test could not start  (brokers.py)
└── BrokerToolMissing  a program it needs is not installed
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class InputError(AgentError):
    """A command the agent refuses; ``code`` is the stable error code of the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TaskFailure(AgentError):
    """Why an attempt failed, in Azure Batch's failureInfo terms."""

    def __init__(self, code: str, message: str, *, category: str = "usererror") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.category = category


class StagingFailed(TaskFailure):
    """A resource file could not be placed; the attempt fails before its command runs and is not retried."""


class ConfigError(AgentError):
    """Settings the agent cannot start with."""


class StoreCorrupt(AgentError):
    """A durable record that cannot be read back."""


class BrokerUnavailable(RuntimeError):
    """No broker of the requested kind could be started."""


class BrokerToolMissing(BrokerUnavailable):
    """A program the requested broker needs (mosquitto, mosquitto_passwd, openssl) is not installed."""
