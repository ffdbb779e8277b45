"""Hypothesis strategies for hostile input: commands, job documents and raw payloads an attacker could send."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# What a generated commandLine may run: nothing (a program that does not exist) or something harmless.
# No command that fails with an exit code: with maxTaskRetryCount -1 it would be retried for ever.
SAFE_COMMAND_LINES = ["/bin/true", "true", "/bin/echo x\x00y", "/nonexistent/program", "", "   ", "'unclosed"]
HOSTILE_TEXT = [
    "",
    "a/b",
    "+",
    "#",
    "a/+/#",
    "..",
    "../..",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    ".",
    "shared/../../state",
    "workitems/../..",
    "x\x00y",
    "\x00",
    "\n",
    "\r\n\t\x1b[31m",
    "ids\u202eevil",
    "\ud7ff\ue000",
    "a" * 65,
    "a" * 5000,
    "CON",
    "$(reboot)",
    "`id`",
    "%s%n",
    "{p}/clients/x/replies",
]
BAD_DURATIONS = ["", "P", "PT", "PT-1S", "-PT1S", "P1Y", "PT1.5.5S", "PT99999999999999999999S", "P99999999D", "soon"]
BAD_NUMBERS = [-1, -2, -(2**31), -(2**63), 2**31, 2**63, 2**64, 2**70, 10**30, 1.5, float("1e308"), True, "3"]

texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
# "seed" is the harness's active job: tasks added to it really run, with whatever else was generated.
ids = st.one_of(st.just("seed"), st.from_regex(r"\A[A-Za-z0-9_-]{1,8}\Z"), texts)
durations = st.one_of(st.sampled_from(["PT1S", "PT0S", "PT15M", "P7D"]), st.sampled_from(BAD_DURATIONS), texts)
numbers = st.one_of(st.integers(min_value=-3, max_value=3), st.sampled_from(BAD_NUMBERS))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
# SEED_FILE is made by the harness before the first example, so reads of a real file are tried too.
SEED_FILE = "workitems/seed/job-1/seed/stdout.txt"
REAL_PATHS = ["", "shared", "workitems", "startup", SEED_FILE, "workitems/seed/job-1/seed/wd", SEED_FILE + "/.."]
paths = st.one_of(st.sampled_from(HOSTILE_TEXT), st.sampled_from(REAL_PATHS), texts)


def _maybe(field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), values.map(lambda value: {field: value}))


constraints = st.builds(
    lambda *parts: {k: v for part in parts for k, v in part.items()},
    _maybe("maxWallClockTime", durations),
    _maybe("retentionTime", durations),
    _maybe("maxTaskRetryCount", numbers),
)
identities = st.one_of(
    st.none(),
    st.fixed_dictionaries({"userName": texts}),
    st.fixed_dictionaries(
        {"autoUser": st.fixed_dictionaries({"scope": st.sampled_from(["task", "pool", "x"]), "elevationLevel": texts})}
    ),
)
resource_files = st.lists(
    st.fixed_dictionaries(
        {"httpUrl": st.sampled_from(["http://127.0.0.1:9/x", "file:///etc/passwd"]), "filePath": paths}
    ),
    max_size=2,
)
tasks = st.fixed_dictionaries(
    {"id": ids, "commandLine": st.sampled_from(SAFE_COMMAND_LINES)},
    optional={
        "constraints": constraints,
        "userIdentity": identities,
        "resourceFiles": resource_files,
        "environmentSettings": st.lists(st.fixed_dictionaries({"name": texts, "value": texts}), max_size=2),
    },
)
# Tasks the agent accepts, with the edges of what is valid: they really run in the harness's "seed" job.
valid_identities = st.sampled_from(
    [
        None,
        {"autoUser": {"scope": "task"}},
        {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
        {"userName": "nobody"},
        {"userName": "no-such-user"},
    ]
)
valid_tasks = st.fixed_dictionaries(
    {"id": st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), "commandLine": st.sampled_from(SAFE_COMMAND_LINES)},
    optional={
        "constraints": st.fixed_dictionaries(
            {"retentionTime": st.sampled_from(["PT0S", "PT0.1S", "P99999999D"])},
            optional={
                "maxWallClockTime": st.sampled_from(["PT0S", "PT1S", "P99999999D", "P10675199DT2H48M5.4775807S"]),
                "maxTaskRetryCount": st.integers(min_value=-1, max_value=2),
            },
        ),
        "userIdentity": valid_identities,
        "environmentSettings": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["HOME", "TMPDIR", "USER", "X"]), "value": texts}),
            max_size=3,
        ),
    },
)
commands = st.one_of(
    st.fixed_dictionaries({"type": st.just("addTask"), "jobId": st.just("seed"), "task": valid_tasks}),
    st.fixed_dictionaries({"type": st.just("addTask"), "jobId": ids, "task": tasks}),
    st.fixed_dictionaries({"type": st.just("terminateTask"), "jobId": ids, "taskId": ids}),
    st.fixed_dictionaries({"type": st.just("listFiles")}, optional={"path": paths, "recursive": json_values}),
    st.fixed_dictionaries(
        {"type": st.just("getFile"), "path": st.one_of(st.just(SEED_FILE), paths)},
        optional={"offset": numbers, "length": numbers},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["disableScheduling", "enableScheduling", "frobnicate", ""])}),
)
jobs = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "state": st.sampled_from(["active", "terminating", "deleting", "completed", "x"]),
        "poolId": ids,
        "commonEnvironmentSettings": st.lists(st.fixed_dictionaries({"name": texts, "value": texts}), max_size=2),
        "jobPreparationTask": tasks,
        "jobReleaseTask": st.fixed_dictionaries(
            {"commandLine": st.sampled_from(SAFE_COMMAND_LINES)}, optional={"maxWallClockTime": durations}
        ),
    },
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A generated document with one field dropped, replaced by any JSON value, or added."""
    document = dict(draw(base))
    action = draw(st.sampled_from(["keep", "drop", "replace", "add"]))
    keys = sorted(document)
    if action == "drop" and keys:
        document.pop(draw(st.sampled_from(keys)))
    elif action == "replace" and keys:
        document[draw(st.sampled_from(keys))] = draw(json_values)
    elif action == "add":
        document[draw(texts)] = draw(json_values)
    return document


def deep(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def _with_tail(head: str, tail: str) -> bytes:
    return (head + ", " + tail + "}").encode()


def raw_payload(envelope: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Payloads that are not a command at all, or are one with a huge or deeply nested part."""
    head = json.dumps(envelope)[:-1]
    nested_objects = '{"a":'
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'"addTask"', b"\xff\xfe"]),
        st.integers(min_value=10, max_value=200_000).map(lambda n: _with_tail(head, '"task": ' + deep(n))),
        st.integers(min_value=10, max_value=50_000).map(
            lambda n: _with_tail(head, '"x": ' + deep(n, nested_objects, "}"))
        ),
        st.integers(min_value=1, max_value=3).map(lambda mb: _with_tail(head, '"jobId": "' + "a" * (mb << 20) + '"')),
    )
