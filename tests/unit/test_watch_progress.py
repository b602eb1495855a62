"""roles/model/action_plugins/tpserve_watch.py (issue 16.5): the status line of a long async step
(bytes done of the total, rate, ETA, elapsed) and its closing line; the job-state parsing; and the
action really polling an async job in ansible-playbook, printing status lines and the total."""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path

from conftest import REPO, load_module, run_playbook

watch = load_module("tpserve_watch", REPO / "roles/model/action_plugins/tpserve_watch.py")


def test_bytes_and_durations_read_like_a_person_would_write_them() -> None:
    assert watch.fmt_bytes(0) == "0 B"
    assert watch.fmt_bytes(1023) == "1023 B"
    assert watch.fmt_bytes(1536) == "1.5 KiB"
    assert watch.fmt_bytes(15.3e9) == "14.2 GiB"
    assert watch.fmt_duration(7) == "7 s"
    assert watch.fmt_duration(125) == "2 min 5 s"
    assert watch.fmt_duration(3725) == "1 h 2 min"
    assert watch.fmt_duration(-3) == "0 s"


def test_status_line_with_a_known_total_has_percent_rate_and_eta() -> None:
    gib = 1 << 30
    line = watch.status_line("[te2] model fan-out", gib, 4 * gib, 100 * (1 << 20), 12)
    assert line == (
        "[te2] model fan-out: 1.0 GiB / 4.0 GiB (25%), 100.0 MiB/s, ETA 31 s (elapsed 12 s)"
    )


def test_status_line_without_a_total_or_a_rate_says_so() -> None:
    assert watch.status_line("[localhost] wheelhouse build", 5 << 20, 0, 0.0, 3) == (
        "[localhost] wheelhouse build: 5.0 MiB, rate - (elapsed 3 s)"
    )
    # all bytes there, the job not finished yet (the manifest, a rename): no ETA
    assert watch.status_line("x", 10, 10, 5.0, 4).endswith("5 B/s, finishing (elapsed 4 s)")
    # the first trickle (ssh and rsync starting) gives no ETA of hours
    assert watch.status_line("x", 258, 1 << 30, 57.8, 6) == (
        "x: 258 B / 1.0 GiB (0%), 57 B/s, ETA - (elapsed 6 s)"
    )


def test_rate_is_taken_over_the_samples_window() -> None:
    assert watch.rate_over(deque([(0.0, 0)])) == 0.0
    assert watch.rate_over(deque([(0.0, 0), (5.0, 500), (10.0, 2000)])) == 200.0
    # a shrinking directory (a temporary file renamed away) is not a negative rate
    assert watch.rate_over(deque([(0.0, 900), (10.0, 100)])) == 0.0


def test_done_line_has_total_time_and_average_rate() -> None:
    assert watch.done_line("[te1] model download", 300 << 20, 60) == (
        "[te1] model download: done in 1 min 0 s, 300.0 MiB (5.0 MiB/s)"
    )
    assert watch.done_line("x", 0, 2, failed=True) == "x: FAILED after 2 s, 0 B"


def test_job_state_follows_async_wrapper() -> None:
    assert watch.job_state('{"started": 1, "finished": 0, "ansible_job_id": "j1"}') == (
        False,
        {"started": 1, "finished": 0, "ansible_job_id": "j1"},
    )
    assert watch.job_state('{"rc": 0, "stdout": ""}')[0] is True
    assert watch.job_state('{"started": 1, "finished": 1}')[0] is True
    assert watch.job_state("")[0] is False  # not written yet / being written
    assert watch.job_state("[1]")[0] is False


def test_ansible_polls_an_async_job_with_status_lines(tmp_path: Path, monkeypatch) -> None:
    """A 3 s job writing 3 x 1 MiB into a directory: status lines with bytes, then the total;
    the task's result is the job's (rc, stdout) and its status file is gone."""
    out = tmp_path / "out"
    out.mkdir()
    job = f"for i in 1 2 3; do head -c 1048576 /dev/zero > {out}/f$i; sleep 1; done; echo wrote"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "slow job", "ansible.builtin.shell": job, "async": 60, "poll": 0,
         "register": "job"},
        {"name": "watch it", "tpserve_watch": {
            "jid": "{{ job.ansible_job_id }}", "label": "unit job", "path": str(out),
            "total": 3 << 20, "interval": 1}, "register": "watched"},
        {"name": "result", "ansible.builtin.copy": {
            "content": "{{ watched | to_json }}", "dest": str(tmp_path / "result.json"),
            "mode": "0644"}},
    ]}]  # fmt: skip
    playbook = tmp_path / "p.yml"
    playbook.write_text(json.dumps(play))
    # the role's action_plugins directory, as loading the role would add it
    monkeypatch.setenv("ANSIBLE_ACTION_PLUGINS", str(REPO / "roles/model/action_plugins"))
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    run = run_playbook(tmp_path, inv, str(playbook), check=False)
    assert run.rc == 0, run.out[-3000:]
    lines = [line for line in run.out.splitlines() if "[localhost] unit job:" in line]
    assert any("/ 3.0 MiB (" in line and "elapsed" in line for line in lines), run.out[-3000:]
    assert lines[-1].startswith("[localhost] unit job: done in "), lines
    assert "3.0 MiB" in lines[-1]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["rc"] == 0 and result["stdout"] == "wrote" and result["bytes"] == 3 << 20
    assert not Path(result.get("results_file", "/nonexistent")).exists()


def test_measure_command_sums_file_sizes_locally_and_through_ssh(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 1000)
    (tmp_path / "d" / "b").write_bytes(b"y" * 24)
    out = subprocess.run(
        ["sh", "-c", watch.measure_command(str(tmp_path / "d"))], capture_output=True, text=True
    )
    assert out.stdout.strip() == "1024"
    # a missing path is 0 bytes, not an error
    missing = watch.measure_command(str(tmp_path / "nothing"))
    assert subprocess.run(["sh", "-c", missing], capture_output=True, text=True).stdout == "0\n"
    # through a remote shell: the whole command is one quoted word for it
    via = watch.measure_command("/v 1", "ssh -o BatchMode=yes u@10.0.0.2")
    assert via.startswith("ssh -o BatchMode=yes u@10.0.0.2 '") and "/v 1" in via
