"""Action `tpserve_watch`: wait for an async job with a status line per node (issue 16.5).

Long steps (the model download on the master, its fan-out to every worker, the wheelhouse build on
the controller) run as async tasks (`async: N`, `poll: 0`); this action then polls the job and,
every `interval` seconds, prints one line for the node:

    [te2] model fan-out: 812.4 MiB / 1.5 GiB (53%), 95.2 MiB/s, ETA 7 s (elapsed 9 s)

and at the end the total:

    [te2] model fan-out: done in 16 s, 1.5 GiB (96.3 MiB/s)

The bytes are measured on the host the task runs on (its delegate): the apparent size of the files
under `path` (what has arrived so far: rsync's and the hubs' temporary files included), optionally
through `via` (a command prefix such as `ssh tpserve@10.0.0.12`, to measure a directory on the
receiving node), minus `base` (bytes that were there already). `total` is the expected size
(0 = unknown: no percentage and no ETA; no ETA either before 1% has arrived). The rate is taken over
the last `window` seconds (default two intervals). Each
poll is one raw shell command (no module run): the size and the job's status file. When the job
ends, `final_path` (if given: where a staging directory went) is measured once more; the job's
result (as async_status returns it: rc, stdout, ...) is this task's result, plus
`elapsed_s`, `bytes` and `rate_bps`; the job's status file is removed.

    - ansible.builtin.command: rsync ...
      async: 7200
      poll: 0
      register: job
    - tpserve_watch:  # noqa fqcn[action]  # role-local action plugin
        jid: "{{ job.ansible_job_id }}"
        label: model fan-out
        path: /opt/tpserve/models/.versions/m/v1
        total: 1610612736
      register: result
      failed_when: result.rc != 0

The formatting functions are pure (unit-tested in tests/unit/test_watch_progress.py).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections import deque
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB."""
    n = float(n)
    for unit in UNITS:
        if abs(n) < 1024 or unit == UNITS[-1]:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_duration(seconds: float) -> str:
    """7 -> '7 s', 125 -> '2 min 5 s', 3725 -> '1 h 2 min'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def rate_over(samples: deque[tuple[float, int]]) -> float:
    """Bytes per second between the oldest and the newest (time, bytes) sample (0 if flat)."""
    if len(samples) < 2:
        return 0.0
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0


def status_line(label: str, done: int, total: int, rate: float, elapsed: float) -> str:
    """One progress line: bytes done (of total), rate, ETA, elapsed."""
    parts = [fmt_bytes(done)]
    if total > 0:
        pct = min(100.0, 100.0 * done / total)
        parts = [f"{fmt_bytes(done)} / {fmt_bytes(total)} ({pct:.0f}%)"]
    parts.append(f"{fmt_bytes(rate)}/s" if rate > 0 else "rate -")
    # no ETA from the first trickle (connections and processes starting): 1% first
    if total > 0 and rate > 0 and total / 100 <= done < total:
        parts.append(f"ETA {fmt_duration((total - done) / rate)}")
    elif total > 0 and done < total:
        parts.append("ETA -")
    elif total > 0 and done >= total:
        parts.append("finishing")
    return f"{label}: {', '.join(parts)} (elapsed {fmt_duration(elapsed)})"


def done_line(label: str, done: int, elapsed: float, failed: bool = False) -> str:
    """The closing line: total time, bytes and the average rate."""
    verb = "FAILED after" if failed else "done in"
    rate = f" ({fmt_bytes(done / elapsed)}/s)" if elapsed > 0 and done > 0 else ""
    return f"{label}: {verb} {fmt_duration(elapsed)}, {fmt_bytes(done)}{rate}"


def job_state(text: str) -> tuple[bool, dict[str, Any]]:
    """(finished, data) from an async job's status file: async_wrapper writes
    {"started": 1, "finished": 0, ...} while the job runs and the module's result at the end."""
    try:
        data = json.loads(text)
    except ValueError:
        return False, {}
    if not isinstance(data, dict):
        return False, {}
    return ("started" not in data or bool(data.get("finished"))), data


def measure_command(path: str, via: str = "") -> str:
    """Shell command printing the bytes of the files under PATH (apparent sizes: a sparse file
    counts in full, directories not), through VIA (e.g. `ssh user@node`) when given."""
    cmd = (
        f"find {shlex.quote(path)} -type f -printf '%s\\n' 2>/dev/null"
        " | awk '{ s += $1 } END { print s + 0 }'"
    )
    return f"{via} {shlex.quote(cmd)}" if via else cmd


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            "jid",
            "label",
            "path",
            "via",
            "base",
            "total",
            "interval",
            "window",
            "timeout",
            "final_path",
        )
    )

    @staticmethod
    def _measure(path: str, via: str) -> str:
        return measure_command(path, via)

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        jid = str(args.get("jid") or "")
        if not jid:
            raise AnsibleActionFail("tpserve_watch needs jid (the async task's ansible_job_id)")
        # the node the line is about (a worker the master feeds), or the controller for a job
        # delegated to it (the wheelhouse build)
        host = (task_vars or {}).get("inventory_hostname", "?")
        if self._task.delegate_to in ("localhost", "127.0.0.1"):
            host = "localhost"
        label = f"[{host}] {args.get('label') or 'job'}"
        path = str(args.get("path") or "")
        via = str(args.get("via") or "")
        base = int(args.get("base") or 0)
        total = max(0, int(args.get("total") or 0) - base)
        interval = max(1.0, float(args.get("interval") or 10))
        window = max(interval, float(args.get("window") or 2 * interval))
        timeout = float(args.get("timeout") or 0)

        async_dir = self._remote_expand_user(
            self.get_shell_option("async_dir", default="~/.ansible_async")
        )
        status_file = self._connection._shell.join_path(async_dir, jid)
        measure = self._measure(path, via) if path else "true"
        poll = f"{measure}; echo '@@'; cat {shlex.quote(status_file)} 2>/dev/null"

        start = time.monotonic()
        samples: deque[tuple[float, int]] = deque()
        done = peak = 0
        last_line = start
        polls = 0
        while True:
            polls += 1
            res = self._low_level_execute_command(poll, sudoable=True)
            out = res.get("stdout", "")
            size_text, _, status_text = out.partition("@@")
            now = time.monotonic()
            with contextlib.suppress(ValueError, IndexError):
                done = max(0, int(size_text.strip().splitlines()[-1]) - base)
            # a staging directory renamed into place at the end measures 0: report the most seen
            peak = max(peak, done)
            finished, _ = job_state(status_text.strip())
            if finished:
                break
            samples.append((now, done))
            while len(samples) > 2 and now - samples[0][0] > window:
                samples.popleft()
            if now - last_line >= interval - 0.5:
                display.display(status_line(label, done, total, rate_over(samples), now - start))
                last_line = now
            if timeout and now - start > timeout:
                raise AnsibleActionFail(
                    f"{label}: still running after {fmt_duration(timeout)} (job {jid})"
                )
            # quick jobs (a re-run with little to do) end after the first polls: 0.5, 1, 2, 4 s ...
            time.sleep(min(interval, 0.25 * 2**polls))

        final = self._execute_module(
            module_name="ansible.legacy.async_status",
            module_args={"jid": jid, "mode": "status", "_async_dir": async_dir},
            task_vars=task_vars,
        )
        self._execute_module(
            module_name="ansible.legacy.async_status",
            module_args={"jid": jid, "mode": "cleanup", "_async_dir": async_dir},
            task_vars=task_vars,
        )
        final_path = str(args.get("final_path") or "")
        if final_path:
            # where the result went (a staging directory renamed into place between two polls)
            res = self._low_level_execute_command(self._measure(final_path, via), sudoable=True)
            with contextlib.suppress(ValueError, IndexError):
                peak = max(peak, int(res.get("stdout", "").strip().splitlines()[-1]) - base)
        elapsed = time.monotonic() - start
        failed = bool(final.get("failed")) or final.get("rc", 0) not in (0, None)
        display.display(done_line(label, peak, elapsed, failed))
        for key in ("invocation", "results_file", "started", "finished", "ansible_job_id"):
            final.pop(key, None)
        result.update(final)
        rate = int(peak / elapsed) if elapsed else 0
        result.update(elapsed_s=round(elapsed, 1), bytes=peak, rate_bps=rate)
        return result
