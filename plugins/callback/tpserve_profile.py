"""Callback `tpserve_profile`: where a play spends its time (issue 16.3, the profile_tasks idea
without the ansible.posix collection, which this offline controller does not have).

    ANSIBLE_CALLBACKS_ENABLED=tpserve_profile ansible-playbook -i inventory/lab site.yml

At the end it prints the total wall time and the slowest tasks (wall time from a task's start to
the next task's start, summed over the task's runs: loops and includes count once per run).
TPSERVE_PROFILE_TOP sets how many (default 15).
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


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "tpserve_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.timings = Timings()

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self.timings.task(f"{task.get_name()}")

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.timings.task(f"handler: {task.get_name()}")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        for line in self.timings.report(int(os.environ.get("TPSERVE_PROFILE_TOP", "15"))):
            self._display.display(line)
