"""Callback `tpserve_profile`: where a play spends its time (issue 16.3, the profile_tasks idea
without the ansible.posix collection, which this offline controller does not have).

    ANSIBLE_CALLBACKS_ENABLED=tpserve_profile ansible-playbook -i inventory/lab site.yml

At the end it prints the total wall time and the slowest tasks (wall time from a task's start to
the next task's start, summed over the task's runs: loops and includes count once per run).
TPSERVE_PROFILE_TOP sets how many (default 15). It also counts the module runs on the nodes (each
host's and each loop item's result of a task that is not a controller-side action such as assert,
set_fact or debug, nor delegated to localhost): a figure that does not depend on the machine's
load, for comparing two versions of a playbook on a shared machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: tpserve_profile
type: aggregate
short_description: the slowest tasks of a run and its total time
description: Prints the total wall time and the slowest tasks at the end of a playbook run.
requirements:
  - enabled with callbacks_enabled / ANSIBLE_CALLBACKS_ENABLED=tpserve_profile
"""


class Timings:
    """Task wall times: each task runs until the next one starts (or the run ends)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.current: str | None = None
        self.since = self.start
        self.totals: dict[str, float] = {}

    def task(self, name: str | None) -> None:
        now = self.clock()
        if self.current is not None:
            self.totals[self.current] = self.totals.get(self.current, 0.0) + now - self.since
        self.current, self.since = name, now

    def report(self, top: int) -> list[str]:
        self.task(None)
        total = self.clock() - self.start
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1])[:top]
        lines = [f"tpserve_profile: {total:.1f} s in all; the {len(rows)} slowest tasks:"]
        lines += [f"{seconds:8.1f} s  {name}" for name, seconds in rows]
        return lines


# Actions that run in the controller's worker only (no connection to the node).
LOCAL_ACTIONS = frozenset(
    {
        "assert", "debug", "fail", "set_fact", "meta", "include_tasks", "import_tasks",
        "include_role", "import_role", "include_vars", "validate_argument_spec", "add_host",
        "group_by", "set_stats", "pause",
    }
)  # fmt: skip
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})


class RemoteRuns:
    """Module runs on the nodes, by the node that ran them (the delegate when delegated)."""

    def __init__(self) -> None:
        self.by_node: dict[str, int] = {}

    def add(self, action: str, host: str, delegate: str | None = None) -> None:
        if action.rsplit(".", 1)[-1] in LOCAL_ACTIONS:
            return
        node = delegate or host
        if node in LOCAL_HOSTS:
            return
        self.by_node[node] = self.by_node.get(node, 0) + 1

    def report(self) -> str:
        total = sum(self.by_node.values())
        nodes = ", ".join(f"{n} {c}" for n, c in sorted(self.by_node.items()))
        return f"tpserve_profile: {total} module runs on the nodes ({nodes or 'none'})"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "tpserve_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.timings = Timings()
        self.remote = RemoteRuns()

    def _count(self, result: Any, item: bool = False) -> None:
        if not item and "results" in (getattr(result, "result", None) or result._result):
            return  # a loop: its items were counted one by one
        task = getattr(result, "task", None) or result._task
        host = getattr(result, "host", None) or result._host
        self.remote.add(task.action, host.get_name(), task.delegate_to or None)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._count(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._count(result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._count(result, item=True)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._count(result, item=True)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self.timings.task(f"{task.get_name()}")

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.timings.task(f"handler: {task.get_name()}")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for line in self.timings.report(int(os.environ.get("TPSERVE_PROFILE_TOP", "15"))):
            self._display.display(line)
        self._display.display(self.remote.report())
