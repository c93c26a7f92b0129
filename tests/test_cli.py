"""The command line: exact output of every command, and bad input that is refused without a trace.

Happy paths run in-process through click's CliRunner; the bad-input table runs the installed
`queuectl` command so that exit codes and stderr are the real ones.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

import queuectl.cli as cli_module
from queuectl.cli import cli
from queuectl.core.job import Job, JobState
from queuectl.core.queue import Outcome, QueueManager
from queuectl.core.storage import get_storage

EQUALS = "=" * 40
_EXE = shutil.which("queuectl", path=os.path.dirname(sys.executable))
QUEUECTL = [_EXE] if _EXE else [sys.executable, "-m", "queuectl"]
# Placeholder in the bad-input table for the path of a regular file (not a directory).
PLAIN_FILE = "<plain-file>"


# -- helpers -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No inherited store selection, and a scratch working directory for the default path."""
    monkeypatch.delenv("QUEUECTL_STORAGE_PATH", raising=False)
    monkeypatch.delenv("QUEUECTL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data(tmp_path) -> Path:
    return tmp_path / "data"


def ok(data: Path, *args: str) -> str:
    """Runs a command in process against `data`; it must succeed with nothing on stderr."""
    result = CliRunner().invoke(cli, ["--storage-path", str(data), *args])
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def enqueued_id(stdout: str) -> str:
    match = re.fullmatch(r"Job enqueued successfully!\n   ID: (\S+)\n   Command: .*\n", stdout, re.S)
    assert match, stdout
    return match.group(1)


@contextmanager
def manager_for(path: Path) -> Iterator[QueueManager]:
    mgr = QueueManager(get_storage(str(path)))
    try:
        yield mgr
    finally:
        mgr.storage.close()


def stored(path: Path, ref: str) -> Job:
    with manager_for(path) as mgr:
        return mgr.resolve(ref)


def run_next(mgr: QueueManager, outcome: Outcome | None) -> Job:
    """Claims the next due job as a fake worker and, unless outcome is None, finishes it."""
    job = mgr.claim("test-owner")
    assert job is not None
    return job if outcome is None else mgr.finish(job, outcome)


def bury(path: Path, text: str, error: str = "exit code 1") -> Job:
    """Enqueues a job with no retries and fails its only attempt: it lands in the DLQ.

    Call it before other jobs are pending: a claim takes the oldest due job.
    """
    with manager_for(path) as mgr:
        job = mgr.enqueue(text, max_retries=0)
        dead = run_next(mgr, Outcome(exit_code=1, error=error))
    assert dead.id == job.id and dead.state is JobState.DEAD
    return dead


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under root (root included, nothing skipped): its full mode and a content digest."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = "link:" + os.readlink(path)
        else:
            content = ""
        found[str(path.relative_to(root))] = (st.st_mode, content)
    return found


def bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(reason=f"BUG: {reason}", strict=True)


# -- enqueue -------------------------------------------------------------------------------
def test_enqueue_prints_a_uuid4_id_and_the_command(data):
    out = ok(data, "enqueue", "echo 'Hello World'")
    job_id = enqueued_id(out)
    assert uuid.UUID(job_id).version == 4 and str(uuid.UUID(job_id)) == job_id
    assert out == f"Job enqueued successfully!\n   ID: {job_id}\n   Command: echo 'Hello World'\n"
    job = stored(data, job_id)
    assert (job.command, job.state, job.attempts, job.max_retries) == ("echo 'Hello World'",
                                                                      JobState.PENDING, 0, 3)


def test_enqueue_max_retries_option_is_stored(data):
    job_id = enqueued_id(ok(data, "enqueue", "curl -fsS https://example.com", "--max-retries", "5"))
    assert stored(data, job_id).max_retries == 5
    zero = enqueued_id(ok(data, "enqueue", "true", "--max-retries", "0"))
    assert stored(data, zero).max_retries == 0


def test_enqueue_a_json_spec(data):
    out = ok(data, "enqueue", '{"id":"job1","command":"sleep 2","max_retries":3}')
    assert out == "Job enqueued successfully!\n   ID: job1\n   Command: sleep 2\n"
    job = stored(data, "job1")
    assert (job.id, job.command, job.max_retries, job.state) == ("job1", "sleep 2", 3, JobState.PENDING)


def test_max_retries_option_overrides_the_json_spec(data):
    ok(data, "enqueue", '{"id":"job2","command":"true","max_retries":3}', "--max-retries", "7")
    assert stored(data, "job2").max_retries == 7


# -- status --------------------------------------------------------------------------------
def test_status_on_an_empty_store(tmp_path):
    out = ok(tmp_path / "nowhere", "status")
    assert not (tmp_path / "nowhere").exists()
    assert out == "\n".join([
        "QueueCTL System Status", EQUALS,
        "Pending     0", "Processing  0", "Completed   0", "Failed      0", "Dead (DLQ)  0",
        "Total       0", EQUALS, "No worker manager running", ""])


def test_status_counts_every_state(data):
    with manager_for(data) as mgr:
        mgr.set_config("backoff_base", "10")  # failed jobs stay unclaimable during the test
        mgr.enqueue("false", max_retries=0)
        for _ in range(2):
            mgr.enqueue("false", max_retries=2)
        for _ in range(3):
            mgr.enqueue("true")
        for _ in range(4):
            mgr.enqueue("sleep 1")
        run_next(mgr, Outcome(exit_code=1, error="exit code 1"))  # dead
        for _ in range(2):
            run_next(mgr, Outcome(exit_code=1, error="exit code 1"))  # failed, retry later
        for _ in range(3):
            run_next(mgr, Outcome(exit_code=0))  # completed
        for _ in range(4):
            run_next(mgr, None)  # left processing
    for n in range(5):
        ok(data, "enqueue", f"echo {n}")
    assert ok(data, "status") == "\n".join([
        "QueueCTL System Status", EQUALS,
        "Pending     5", "Processing  4", "Completed   3", "Failed      2", "Dead (DLQ)  1",
        "Total       15", EQUALS, "No worker manager running", ""])


# -- list ----------------------------------------------------------------------------------
def test_list_shows_every_job_oldest_first(data):
    first = enqueued_id(ok(data, "enqueue", "echo hello"))
    ok(data, "enqueue", '{"id":"job1","command":"sleep 2","max_retries":3}')
    third = enqueued_id(ok(data, "enqueue", "ls -la | wc -l", "--max-retries", "5"))
    assert ok(data, "list") == "\n".join([
        "ID        Command         State      Attempts    Max Retries",
        "--------  --------------  -------  ----------  -------------",
        f"{first[:8]}  echo hello      pending           0              3",
        "job1      sleep 2         pending           0              3",
        f"{third[:8]}  ls -la | wc -l  pending           0              5",
        ""])


def test_list_shows_chosen_ids_in_full_and_generated_ones_short(data):
    for job_id in ("nightly-build-1", "nightly-build-2", "12345678"):
        ok(data, "enqueue", json.dumps({"id": job_id, "command": "true"}))
    ok(data, "enqueue", '{"id":"after-both","command":"true"}', "--after", "nightly-build-1,nightly-build-2")
    generated = enqueued_id(ok(data, "enqueue", "true", "--after", "12345678"))
    out = ok(data, "list", "--wide")
    for job_id in ("nightly-build-1", "nightly-build-2", "nightly-build-1,nightly-build-2"):
        assert job_id in out
    row = next(line for line in out.splitlines() if line.startswith(generated[:8]))
    assert generated not in row and "12345678" in row


def test_list_cuts_long_commands(data):
    ok(data, "enqueue", '{"id":"long","command":"echo ' + "x" * 60 + '"}')
    row = ok(data, "list").splitlines()[2]
    assert row.startswith("long  echo " + "x" * 42 + "...  pending")
    assert len("echo " + "x" * 42 + "...") == 50


def test_list_filters_by_state(data):
    bury(data, '{"id":"dead-1","command":"exit 3"}', error="exit code 3")
    ok(data, "enqueue", '{"id":"pend-1","command":"echo hi"}')
    assert ok(data, "list", "--state", "dead") == "\n".join([
        "ID      Command    State      Attempts    Max Retries",
        "------  ---------  -------  ----------  -------------",
        "dead-1  exit 3     dead              1              0",
        ""])
    pending = ok(data, "list", "--state", "PENDING").splitlines()
    assert pending[2:] == ["pend-1  echo hi    pending           0              3"]
    assert ok(data, "list", "--state", "completed") == "No completed jobs found\n"


def test_tables_show_ids_commands_and_errors_that_look_like_numbers_as_given(data):
    # Short ids are hex: `7538e158` reads as a float and `01234567` as an int with its zero lost;
    # about one uuid in sixty starts like that, and a column of such cells alone was reformatted.
    dead = "12345678-1234-4234-8234-123456789abc"
    bury(data, json.dumps({"id": dead, "command": "1e3"}), error="1e9")
    ok(data, "enqueue", '{"id":"7538e158-ab69-4d67-89b0-2b940e4353f6","command":"1e5"}')
    ok(data, "enqueue", '{"id":"01234567-0000-4000-8000-000000000000","command":"007"}')
    for args in (("list",), ("list", "--state", "pending"), ("list", "--wide")):
        rows = [r for r in ok(data, *args).splitlines()[2:] if "pending" in r]
        assert rows[0].startswith("7538e158  1e5        pending"), rows
        assert rows[1].startswith("01234567  007        pending"), rows
    assert "12345678  1e3        dead" in ok(data, "list", "--state", "dead")
    row = ok(data, "dlq", "list").splitlines()[2]
    assert re.fullmatch(dead + r"  1e3\s+1  1e9", row), row
    assert re.search(r"^\s*1  .*  1e9$", ok(data, "show", dead), re.M)


def test_list_on_an_empty_store(data):
    assert ok(data, "list") == "No jobs found\n"
    assert ok(data, "list", "--state", "failed") == "No failed jobs found\n"


# -- the DLQ -------------------------------------------------------------------------------
def test_dlq_list_shows_full_ids_and_last_errors(data):
    bury(data, '{"id":"dead-1","command":"exit 3"}', error="exit code 3")
    second = bury(data, "curl -fsS https://example.invalid", error="E" * 70)
    assert ok(data, "dlq", "list") == "\n".join([
        "ID                                    Command                              Attempts  Last Error",
        "------------------------------------  ---------------------------------  ----------  " + "-" * 60,
        "dead-1                                exit 3                                      1  exit code 3",
        f"{second.id}  curl -fsS https://example.invalid           1  {'E' * 57}...",
        ""])


def test_job_text_reaches_the_terminal_with_its_control_characters_escaped(data):
    """A command or error can hold ESC, BEL or a bidi override: shown raw, it could retitle,
    clear or recolour the terminal of whoever lists it, or disguise what the job runs."""
    command = "echo \x1b]0;pwned\x07 \x1b[2J \u202e"
    ok(data, "enqueue", '{"id":"esc","command":' + json.dumps(command) + '}')  # the user's own: echoed as typed
    shown = [ok(data, "list"), ok(data, "list", "--wide"), ok(data, "show", "esc")]
    ok(data, "cancel", "esc")
    shown.append(ok(data, "dlq", "list"))
    for text in shown:
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, text
        assert "\\x1b]0;pwned\\x07" in text or "\\x1b]0;pwn..." in text or "\\x1b]0;p" in text, text
    assert stored(data, "esc").command == command  # escaped on the way out only


def test_a_tab_in_a_command_keeps_the_table_columns(data):
    ok(data, "enqueue", '{"id":"tab","command":"echo a\\tb"}')
    ok(data, "cancel", "tab")
    for out in (ok(data, "list"), ok(data, "dlq", "list")):
        assert "\t" not in out and "echo a b" in out, out


def test_a_suggestion_for_a_mistyped_command_ends_its_sentence_once():
    result = CliRunner().invoke(cli, ["lgs"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: No such command 'lgs'. Did you mean 'logs'? Try '")


def test_json_output_escapes_what_json_leaves_raw_and_reads_back_the_same(data):
    """JSON escapes C0 controls itself; DEL, C1 controls and format characters (a bidi override,
    an astral tag character) it would write raw, so --json spells them as \\u escapes too."""
    command = "echo \x1b[2J \x7f \x9b31m \u202e \U000e0001 ünï 🚀"
    ok(data, "enqueue", '{"id":"esc","command":' + json.dumps(command) + '}')
    for text in (ok(data, "list", "--json"), ok(data, "show", "esc", "--json")):
        assert not any(c in text for c in "\x1b\x7f\x9b\u202e\U000e0001"), ascii(text)
        assert "\\u202e" in text and "\\udb40\\udc01" in text and "ünï 🚀" in text, ascii(text)
        found = json.loads(text)
        found = found["jobs"][0] if "jobs" in found else found
        assert found["command"] == command


def test_logs_prints_the_bytes_the_command_wrote(data):
    with manager_for(data) as mgr:
        job = mgr.enqueue('{"id":"bin","command":"printf x"}')
        mgr.claim("w1")
        out, err = mgr.storage.output_paths(job.id, 1)
        Path(out).write_bytes(b"caf\xe9\n\xff\x00end")
        Path(err).write_bytes(b"oops \xfe\n")
    result = CliRunner().invoke(cli, ["--storage-path", str(data), "logs", "bin"])
    assert result.exit_code == 0 and result.stdout_bytes == b"caf\xe9\n\xff\x00end\n"
    result = CliRunner().invoke(cli, ["--storage-path", str(data), "logs", "bin", "--stderr", "--tail", "1"])
    assert result.stdout_bytes == b"oops \xfe\n"


def test_enqueue_file_reads_past_a_byte_order_mark(data, tmp_path):
    spec = tmp_path / "jobs.jsonl"
    spec.write_bytes(b'\xef\xbb\xbf{"id":"bom","command":"echo viajson"}\necho two\n')
    ok(data, "enqueue", "--file", str(spec))
    assert stored(data, "bom").command == "echo viajson"


def test_enqueue_file_names_the_line_of_an_id_already_stored(data, tmp_path):
    ok(data, "enqueue", '{"id":"taken","command":"true"}')
    spec = tmp_path / "jobs.jsonl"
    spec.write_text('{"id":"a","command":"true"}\n\n{"id":"taken","command":"echo again"}\n')
    result = CliRunner().invoke(cli, ["--storage-path", str(data), "enqueue", "--file", str(spec)])
    assert result.exit_code == 1 and result.stdout == "", (result.stdout, result.stderr)
    assert result.stderr == "Error: line 3: a job with id 'taken' already exists\n"
    assert json.loads(ok(data, "status", "--json"))["counts"]["pending"] == 1


def test_a_stored_setting_out_of_range_gives_way_to_its_default_until_set_again(data):
    ok(data, "config", "set", "backoff_max", "60")
    (data / "config.json").write_text('{"max_retries": 5000, "backoff_max": 60}')
    p = subprocess.run(QUEUECTL + ["--storage-path", str(data), "config", "get", "max_retries"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout == "3\n", (p.stdout, p.stderr)
    assert p.stderr.splitlines() == ["Ignoring a stored setting (max_retries must be between 0 and 1000, "
                                     "not 5000); its default applies"]
    assert enqueued_id(CliRunner().invoke(cli, ["--storage-path", str(data), "enqueue", "true"]).stdout)
    ok(data, "config", "set", "max_retries", "4")  # the user's value, not the broken one, decides
    assert ok(data, "config", "get", "max_retries") == "4\n"
    assert ok(data, "config", "get", "backoff_max") == "60\n"
    saved = json.loads((data / "config.json").read_text())
    assert (saved["max_retries"], saved["backoff_max"]) == (4, 60)


def test_a_job_file_set_aside_leaves_the_counts_and_the_listing_right(data):
    ok(data, "enqueue", '{"id":"good","command":"true"}')
    ok(data, "enqueue", '{"id":"bad","command":"true"}')
    [bad] = (data / "pending").glob("*_bad.json")
    bad.write_text('{"id":"bad", trunc')
    p = subprocess.run(QUEUECTL + ["--storage-path", str(data), "list"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "good" in p.stdout and "not shown" not in p.stdout, (p.stdout, p.stderr)
    assert "Set aside" in p.stderr
    status = json.loads(ok(data, "status", "--json"))
    assert status["counts"]["pending"] == 1 and status["total"] == 1
    (data / "pending" / "notes.txt").write_text("not a job, never counted")
    p = subprocess.run(QUEUECTL + ["--storage-path", str(data), "list"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "Set aside" in p.stderr
    assert json.loads(ok(data, "status", "--json"))["counts"]["pending"] == 1


def test_an_empty_no_retry_on_overrides_the_configured_list(data):
    ok(data, "config", "set", "no_retry_on", "2")
    job_id = enqueued_id(ok(data, "enqueue", "exit 2", "--no-retry-on", ""))
    assert stored(data, job_id).no_retry_on == []


def test_ctrl_c_while_a_command_waits_exits_130(data):
    """Ctrl+C while `enqueue --file -` reads its input: the shell's convention for an interrupt."""
    import signal
    import time
    p = subprocess.Popen(QUEUECTL + ["--storage-path", str(data), "enqueue", "--file", "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine)

    def reading_stdin() -> bool:  # blocked in read(0, ...): past start-up, in the command itself
        try:
            call = Path(f"/proc/{p.pid}/syscall").read_text().split()
        except OSError:
            return False
        return call[:2] == [reads, "0x0"]

    deadline = time.monotonic() + 30
    if reads is None or not Path(f"/proc/{p.pid}/syscall").exists():
        time.sleep(3)
    while reads is not None and not reading_stdin() and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, (out, err)
    assert err.split() == ["Error:", "interrupted"] and "Traceback" not in err


def test_dlq_list_when_empty(data):
    assert ok(data, "dlq", "list") == "DLQ is empty\n"


def test_dlq_retry_by_full_id_resets_attempts(data):
    bury(data, '{"id":"dead-1","command":"exit 3"}')
    assert stored(data, "dead-1").attempts == 1
    assert ok(data, "dlq", "retry", "dead-1") == "Job dead-1 moved from DLQ to pending queue\n"
    job = stored(data, "dead-1")
    assert (job.state, job.attempts) == (JobState.PENDING, 0)
    assert ok(data, "dlq", "list") == "DLQ is empty\n"
    assert ok(data, "list", "--state", "pending").splitlines()[2] == (
        "dead-1  exit 3     pending           0              0")


def test_dlq_retry_by_unique_prefix(data):
    dead = bury(data, "false")
    other = bury(data, "false")
    prefix = next(dead.id[:n] for n in range(4, 36) if not other.id.startswith(dead.id[:n]))
    assert ok(data, "dlq", "retry", prefix) == f"Job {dead.id} moved from DLQ to pending queue\n"
    assert stored(data, dead.id).state is JobState.PENDING
    assert stored(data, dead.id).attempts == 0
    assert stored(data, other.id).state is JobState.DEAD


# -- config --------------------------------------------------------------------------------
def test_config_lists_every_setting(data):
    assert ok(data, "config") == "\n".join([
        "max_retries = 3", "backoff_base = 2", "backoff_max = 3600", "job_timeout = 30",
        "worker_count = 1", f"storage_path = {data}", "log_level = INFO", "poll_interval = 0.2",
        "no_retry_on = ", "log_max_bytes = 1048576", "rate_limit = 0", "keep_completed = 10000", ""])


def test_config_key_value_sets_a_value(data):
    assert ok(data, "config", "--key", "max_retries", "--value", "5") == "Set max_retries = 5\n"
    assert ok(data, "config", "get", "max_retries") == "5\n"
    assert "max_retries = 5\n" in ok(data, "config")


def test_config_get_and_set_print_json_when_asked(data):
    for args in (["config", "--json", "--key", "max-retries", "--value", "5"],
                 ["config", "set", "max_retries", "5", "--json"], ["config", "--json", "set", "max_retries", "5"]):
        assert json.loads(ok(data, *args)) == {"key": "max_retries", "value": 5}
    changed = json.loads(ok(data, "config", "set", "no-retry-on", "2,3", "--json"))
    assert changed == {"key": "no_retry_on", "value": [2, 3]}
    for args in (["config", "get", "no_retry_on", "--json"], ["config", "--json", "get", "no-retry-on"]):
        assert json.loads(ok(data, *args)) == {"key": "no_retry_on", "value": [2, 3]}


def test_config_set_and_get_accept_dashes(data):
    assert ok(data, "config", "set", "max-retries", "5") == "Set max_retries = 5\n"
    assert ok(data, "config", "get", "max-retries") == "5\n"
    assert ok(data, "config", "get", "max_retries") == "5\n"
    assert ok(data, "config", "set", "backoff-base", "1.5") == "Set backoff_base = 1.5\n"
    assert ok(data, "config", "set", "log_level", "debug") == "Set log_level = DEBUG\n"
    assert ok(data, "config", "get", "storage_path") == f"{data}\n"


def test_new_max_retries_applies_to_jobs_enqueued_afterwards(data):
    before = enqueued_id(ok(data, "enqueue", "echo before"))
    ok(data, "config", "set", "max_retries", "1")
    after = enqueued_id(ok(data, "enqueue", "echo after"))
    explicit = enqueued_id(ok(data, "enqueue", "echo explicit", "--max-retries", "4"))
    assert [stored(data, i).max_retries for i in (before, after, explicit)] == [3, 1, 4]


# -- help ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    [], ["enqueue"], ["start"], ["stop"],
    ["worker"],
    ["worker", "start"], ["worker", "stop"], ["status"], ["list"],
    ["dlq"],
    ["dlq", "list"], ["dlq", "retry"], ["config"], ["config", "set"], ["config", "get"],
], ids=lambda p: " ".join(p) or "queuectl")
def test_every_help_has_an_example(path, data):
    out = ok(data, *path, "--help")
    assert out.startswith("Usage: ")
    assert "Example" in out


# -- errors in process -----------------------------------------------------------------------
def test_main_reports_a_runtime_error_in_one_line(capsys, data):
    with pytest.raises(SystemExit) as exc:
        cli.main(args=["--storage-path", str(data), "dlq", "retry", "nope"])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Error: no job with id 'nope'\n")
    assert not data.exists()


def test_main_reports_a_usage_error_in_one_line(capsys, data):
    with pytest.raises(SystemExit) as exc:
        cli.main(args=["--storage-path", str(data), "list", "--state", "bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Invalid value for '--state'") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e308", "315360001"])
def test_start_refuses_a_timeout_that_is_not_a_positive_finite_number(value, capsys, monkeypatch, data):
    started = []
    monkeypatch.setattr(cli_module, "_start", lambda app, count, timeout: started.append(timeout))
    with pytest.raises(SystemExit) as exc:
        cli.main(args=["--storage-path", str(data), "start", "--timeout", value])
    assert started == []
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("Error: ")


# -- bad input through the real command ------------------------------------------------------
def usage(*args, bug_reason: str | None = None):
    return case(2, *args, bug_reason=bug_reason)


def runtime(*args, bug_reason: str | None = None):
    return case(1, *args, bug_reason=bug_reason)


def case(code: int, *args, bug_reason: str | None):
    marks = [bug(bug_reason)] if bug_reason else []
    shown = " ".join(a if isinstance(a, str) else repr(a) for a in args)
    return pytest.param(code, list(args), marks=marks, id=shown if len(shown) < 60 else shown[:57] + "...")


SPEC_NESTED = '{"command":' + "[" * 100_000
BAD_INPUT = [
    # malformed commands and specs
    usage("enqueue", ""),
    usage("enqueue", "   "),
    usage("enqueue", "\t\n"),
    usage("enqueue"),
    usage("enqueue", "a", "b"),
    usage("enqueue", '{"command":"a\\u0000b"}'),
    usage("enqueue", b"echo \xff"),
    usage("enqueue", "x" * 65537),
    usage("enqueue", '{"command":"' + "x" * 65537 + '"}'),
    usage("enqueue", '{"command":"x"'),
    usage("enqueue", "{}"),
    usage("enqueue", '{"command":""}'),
    usage("enqueue", '{"command":["echo"]}'),
    usage("enqueue", '{"command":"x","nope":1}'),
    usage("enqueue", SPEC_NESTED),
    usage("enqueue", '{"id":"../../etc/passwd","command":"x"}'),
    usage("enqueue", '{"id":"","command":"x"}'),
    usage("enqueue", '{"id":"' + "a" * 4096 + '","command":"x"}'),
    usage("enqueue", '{"id":".hidden","command":"x"}'),
    usage("enqueue", '{"command":"x","max_retries":-1}'),
    usage("enqueue", '{"command":"x","max_retries":1.5}'),
    usage("enqueue", '{"command":"x","max_retries":NaN}'),
    usage("enqueue", '{"command":"x","max_retries":true}'),
    # --max-retries
    usage("enqueue", "x", "--max-retries", "-1"),
    usage("enqueue", "x", "--max-retries", "1.5"),
    usage("enqueue", "x", "--max-retries", "1001"),
    usage("enqueue", "x", "--max-retries", "99999999999999999999999"),
    usage("enqueue", "x", "--max-retries", "abc"),
    # list and dlq retry
    usage("list", "--state", "bogus"),
    usage("list", "--state", ""),
    usage("dlq", "retry", "../../etc/passwd"),
    usage("dlq", "retry", ""),
    usage("dlq", "retry", "   "),
    usage("dlq", "retry", "a" * 4096),
    usage("dlq", "retry", ".hidden"),
    # start
    usage("start", "--count", "0"),
    usage("start", "--count", "100000"),
    usage("start", "--count", "-5"),
    usage("start", "--timeout", "-1"),
    usage("start", "--timeout", "0"),
    usage("start", "--timeout", "abc"),
    usage("start", "--timeout", "1e308"),
    usage("worker", "start", "--count", "0"),
    # config
    usage("config", "set", "max_retries", "abc"),
    usage("config", "set", "max_retries", "1e309"),
    usage("config", "set", "backoff_base", "1e309"),
    usage("config", "set", "backoff_base", "nan"),
    usage("config", "set", "max_retries", "-1"),
    usage("config", "set", "--", "max_retries", "-1"),
    usage("config", "--key", "max_retries", "--value", "-1"),
    usage("config", "set", "max_retries", "1001"),
    usage("config", "set", "max_retries", "2.5"),
    usage("config", "set", "log_level", "verbose"),
    usage("config", "set", "storage_path", "x"),
    usage("config", "--key", "storage_path", "--value", "x"),
    usage("config", "set", "nope", "1"),
    usage("config", "get", "nope"),
    usage("config", "--key", "max_retries"),
    usage("config", "--key", "max_retries", "--value", "5", "get", "max_retries"),
    usage("--storage-path", "", "status"),
    usage("bogus"),
    usage("enqueue", "echo hi", "--unique-key", b"k\xff"),
    usage("enqueue", '{"command":"echo x","unique_key":"\\ud800"}'),
    usage("cancel", "alpha-1", "../x"),  # a malformed id among good ones cancels nothing
    usage("enqueue", '{"command":"echo a","command":"echo b"}'),
    usage("enqueue", "echo hi", "--after", ""),
    usage("enqueue", "echo hi", "--after", "alpha-1,,alpha-2"),
    usage("enqueue", "echo hi", "--no-retry-on", "2,,3"),
    usage("enqueue", "echo hi", "--no-retry-on", "0"),  # success: a job never fails with it
    usage("enqueue", '{"command":"echo hi","no_retry_on":[0,2]}'),
    usage("config", "set", "no_retry_on", "0,2"),
    usage("config", "set", "no_retry_on", "2,,3"),  # refused as --no-retry-on refuses it
    usage("config", "set", "no_retry_on", "\u00b2"),  # isdigit() takes it, int() does not
    usage("config", "set", "keep_completed", "\u00b2"),
    usage("config", "set", "max_retries", "\u0663"),  # int() takes an Arabic-Indic 3
    usage("config", "set", "keep_completed", "\u0663d"),
    usage("config", "set", "keep_completed", "0d"),  # would delete every completed job; 0 keeps all
    usage("enqueue", "echo hi", "--delay", "\u0663m"),
    usage("enqueue", "echo hi", "--no-retry-on", "\u0663"),
    usage("enqueue", "echo hi", "--max-retries", "\u0663"),  # Click's int() took it as 3
    usage("enqueue", "echo hi", "--timeout", "\u0663"),
    usage("enqueue", "echo hi", "--priority", "\u0663"),
    usage("list", "--limit", "\u0663"),
    usage("start", "--timeout", "\u0663"),
    usage("enqueue", "echo hi", "--priority", "1_000"),  # as config set refuses it
    # runtime errors: the input is well formed but the store says no
    runtime("dlq", "retry", "nope"),
    runtime("dlq", "retry", "alpha"),
    runtime("dlq", "retry", "alpha-1"),
    runtime("enqueue", '{"id":"alpha-1","command":"x"}'),
    runtime("enqueue", '{"id":"dead-1","command":"x"}'),
    runtime("cancel", "nope", "alpha-1"),  # an unknown id among good ones cancels nothing
    runtime("logs", "alpha-1"),  # it has not run yet
    runtime("logs", "alpha-1", "--follow"),
    runtime("logs", "dead-1", "--attempt", "9"),
    runtime("--storage-path", PLAIN_FILE, "status"),
    runtime("--storage-path", PLAIN_FILE, "dlq", "retry", "dead-1"),
    runtime("--storage-path", PLAIN_FILE, "enqueue", "echo hi"),
    runtime("--storage-path", PLAIN_FILE, "config", "set", "max_retries", "5"),
    runtime("--storage-path", PLAIN_FILE, "list"),
    runtime("--storage-path", PLAIN_FILE, "dlq", "list"),
    runtime("--storage-path", PLAIN_FILE, "config", "get", "max_retries"),
]


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """A store with a dead job, two pending jobs sharing a prefix, and a stored setting."""
    path = tmp_path_factory.mktemp("template") / "data"
    bury(path, '{"id":"dead-1","command":"exit 3"}')
    with manager_for(path) as mgr:
        mgr.enqueue('{"id":"alpha-1","command":"echo one"}')
        mgr.enqueue('{"id":"alpha-2","command":"echo two"}')
        mgr.set_config("max_retries", "4")
    return path


def test_bad_input_table_is_large_enough():
    assert len(BAD_INPUT) >= 40


def test_snapshot_sees_content_mode_and_new_files(template_store, tmp_path):
    """The "changes nothing" check is only as good as the snapshot: make sure it sees changes."""
    copy = tmp_path / "copy"
    shutil.copytree(template_store, copy)
    before = snapshot(copy)
    assert snapshot(copy) == before
    ok(copy, "config", "set", "max_retries", "4")  # the same value, rewritten
    assert snapshot(copy) == before
    (copy / "config.json").chmod(0o644)
    assert snapshot(copy) != before
    (copy / "config.json").chmod(0o600)
    ok(copy, "config", "set", "max_retries", "5")
    assert snapshot(copy) != before
    ok(copy, "config", "set", "max_retries", "4")
    assert snapshot(copy) == before
    ok(copy, "enqueue", "echo new")
    assert snapshot(copy) != before


@pytest.mark.parametrize("code,args", BAD_INPUT)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(code, args, proc, template_store, tmp_path):
    shutil.copytree(template_store, proc.data)
    plain = tmp_path / "plain-file"
    plain.write_bytes(b"just a file\n")
    argv = [str(plain) if a == PLAIN_FILE else a for a in args]
    before = snapshot(proc.data)

    p = subprocess.run(QUEUECTL + argv, cwd=proc.cwd, env=proc.env, capture_output=True, timeout=30)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    assert p.returncode == code, (out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    if PLAIN_FILE in args:  # named as the storage path the user gave, not as a folder inside it
        assert "not a directory" in lines[0] and f"'{plain}'" in lines[0], err
    assert out == ""
    assert snapshot(proc.data) == before
    assert plain.read_bytes() == b"just a file\n"


# -- read-only commands on a missing store ---------------------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["status"], "Total       0"),
    (["list"], "No jobs found"),
    (["list", "--state", "dead"], "No dead jobs found"),
    (["dlq", "list"], "DLQ is empty"),
    (["config"], "max_retries = 3"),
    (["config", "get", "max_retries"], "3"),
])
def test_read_only_commands_do_not_create_a_missing_store(args, expected, tmp_path):
    missing = tmp_path / "missing" / "data"
    out = ok(missing, *args)
    assert expected in out.splitlines()
    assert not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_read_only_commands_do_not_create_the_default_store(tmp_path):
    runner = CliRunner()
    for args in (["status"], ["list"], ["dlq", "list"], ["config"], ["config", "get", "log_level"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "queuectl_data").exists()


# -- commands are stored exactly ---------------------------------------------------------------
@pytest.mark.parametrize("command", [
    """echo "double" 'single' $HOME `date` $(whoami) | grep -v x && true || false; sleep 0 &""",
    """printf '%s\\n' "it's" 'say "hi"' \\\\backslash > /dev/null 2>&1 < /dev/null""",
    "echo $((1+2)); ls *.py ?.txt [abc] ~ !! # not a comment to us",
    "echo 'ünïcödé 日本語 🚀' \u200b \u00a0 \u202e",
    "  echo padded\t ",
    "echo first\necho second",
    "echo " + "a" * 9995,  # 10,000 characters on one line
], ids=["metacharacters", "quotes", "globs", "unicode", "whitespace", "multiline", "10000-chars"])
def test_commands_round_trip_exactly(command, proc):
    out = proc("enqueue", command).stdout
    job_id = enqueued_id(out)
    assert out.endswith(f"   Command: {command}\n")
    with manager_for(proc.data) as mgr:
        assert mgr.resolve(job_id).command == command


def test_a_leading_brace_means_a_json_spec_so_brace_groups_need_a_prefix(data):
    # documented rule: an argument starting with `{` is a JSON spec; `true && { ...; }` is the way
    command = "true && { echo a; echo b; } > /dev/null"
    job_id = enqueued_id(ok(data, "enqueue", command))
    assert stored(data, job_id).command == command


# -- permissions -----------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_store_is_private_whatever_the_umask(umask, proc):
    for args in (["enqueue", "echo hi"], ["config", "set", "max_retries", "5"],
                 ["enqueue", '{"id":"job1","command":"true"}']):
        p = subprocess.run(QUEUECTL + args, cwd=proc.cwd, env=proc.env, capture_output=True,
                           text=True, umask=umask, timeout=30)
        assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(proc.data.stat().st_mode) == 0o700
    files = 0
    for path in proc.data.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        else:
            assert path.is_file() and not path.is_symlink(), path
            assert mode == 0o600, path
            files += 1
    assert files >= 3 and (proc.data / "config.json").is_file()


# -- choosing the store ----------------------------------------------------------------------
def test_environment_variable_selects_the_store(tmp_path):
    env_store = tmp_path / "from-env"
    env = {"QUEUECTL_STORAGE_PATH": str(env_store)}
    runner = CliRunner()
    result = runner.invoke(cli, ["enqueue", "echo via env"], env=env)
    assert result.exit_code == 0, result.stderr
    job_id = enqueued_id(result.stdout)
    assert stored(env_store, job_id).command == "echo via env"
    assert runner.invoke(cli, ["config", "get", "storage_path"], env=env).stdout == f"{env_store}\n"
    assert not (tmp_path / "queuectl_data").exists()


def test_option_wins_over_the_environment_variable(tmp_path):
    env_store, opt_store = tmp_path / "from-env", tmp_path / "from-option"
    env = {"QUEUECTL_STORAGE_PATH": str(env_store)}
    runner = CliRunner()
    result = runner.invoke(cli, ["--storage-path", str(opt_store), "enqueue", "echo via option"], env=env)
    assert result.exit_code == 0, result.stderr
    job_id = enqueued_id(result.stdout)
    assert stored(opt_store, job_id).command == "echo via option"
    assert not env_store.exists()
    got = runner.invoke(cli, ["--storage-path", str(opt_store), "config", "get", "storage_path"], env=env)
    assert got.stdout == f"{opt_store}\n"


def test_option_wins_over_the_environment_variable_in_a_real_process(proc, tmp_path):
    other = tmp_path / "other"
    job_id = proc.enqueue("echo real")  # proc's environment names proc.data
    other_id = enqueued_id(proc("--storage-path", str(other), "enqueue", "echo other").stdout)
    with manager_for(proc.data) as mgr:
        assert [j.id for j in mgr.list_jobs()] == [job_id]
    with manager_for(other) as mgr:
        assert [j.id for j in mgr.list_jobs()] == [other_id]
