"""The command line: each command parses, calls one QueueManager method, and formats."""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import click

from . import __version__
from .core.errors import EXIT_RUNTIME, EXIT_USAGE, QueuectlError
from .core.job import MAX_DELAY, JobState, printable, short_id
from .core.utils.config import DEFAULT_STORAGE_PATH, STORAGE_ENV, Config
from .params import Integer, Whole

# When this process began, near enough: a `stop` sent after it is meant for this `start`, even
# while the start is still importing and recovering.
LAUNCHED_AT = time.time()

# Columns are cut to these widths so a table stays readable in a terminal.
COMMAND_WIDTH = 50
ERROR_WIDTH = 60
STATUS_ROWS = (("Pending", JobState.PENDING), ("Processing", JobState.PROCESSING),
               ("Completed", JobState.COMPLETED), ("Failed", JobState.FAILED),
               ("Dead (DLQ)", JobState.DEAD))
STATES = [s.value for s in JobState]
# Job ids offered by shell completion at most.
COMPLETION_LIMIT = 50
# Jobs `list` shows by default: the newest ones.
LIST_LIMIT = 200
# Seconds `start --detach` waits for the background manager to show up before giving up.
DETACH_WAIT = 15.0


class QueuectlGroup(click.Group):
    """Turns every error into one line on stderr with the right exit code, never a traceback."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        try:
            code = super().main(args=args, prog_name=prog_name or "queuectl", standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(EXIT_USAGE)
        except click.UsageError as e:
            message = e.format_message().rstrip()
            if e.ctx is not None:
                message += ("" if message.endswith((".", "?")) else ".") + f" Try '{e.ctx.command_path} --help'."
            _fail(message, EXIT_USAGE)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.exceptions.Abort as e:
            # Click turns Ctrl+C at a prompt or in a command into Abort: the shell's 130 still
            # tells a script that the user interrupted, rather than that something failed.
            if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
                _fail("interrupted", 130)
            _fail("aborted", EXIT_RUNTIME)
        except QueuectlError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except OSError as e:
            _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), EXIT_RUNTIME)
        except Exception as e:  # the promise is no traceback, even for our own bugs
            if os.environ.get("QUEUECTL_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e}", EXIT_RUNTIME)
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    message = _shown(" ".join(str(message).split()))  # one line, whatever the cause; job text escaped
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class App:
    """What the group callback hands to each command: the store, opened only when used."""

    def __init__(self, storage_path: str):
        self.storage_path = storage_path
        self._manager: Any = None

    @property
    def manager(self) -> Any:
        if self._manager is None:
            from .core.queue import QueueManager
            from .core.storage import get_storage
            self._manager = QueueManager(get_storage(self.storage_path), self.storage_path)
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.storage.close()


pass_app = click.make_pass_decorator(App)
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document (documented keys).")


def _emit(data: Any) -> None:
    import json
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if not text.replace("\n", "").isprintable():
        # JSON escapes only the C0 controls: DEL, C1 and format characters (bidi overrides) of
        # a job's text would reach the terminal raw. As \u escapes they read back the same.
        text = "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)
    click.echo(text)


def _json_escape(c: str) -> str:
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"  # a surrogate pair, as JSON spells it


def _complete_ids(ctx: click.Context, _param: Any, incomplete: str) -> list[Any]:
    """Shell completion of job ids from the store the command line names."""
    from click.shell_completion import CompletionItem

    from .core.storage import get_storage
    path = ctx.find_root().params.get("storage_path") or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE_PATH
    try:
        store = get_storage(path)
        ids = store.match_ids(incomplete) if store.exists() else []
    except (QueuectlError, OSError):
        return []
    return [CompletionItem(i) for i in ids[:COMPLETION_LIMIT]]


@click.group(cls=QueuectlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--storage-path", envvar=STORAGE_ENV, default=DEFAULT_STORAGE_PATH, show_default=True,
              metavar="PATH", help=f"Data directory (also ${STORAGE_ENV}).")
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, storage_path: str) -> None:
    """queuectl: a background job queue for shell commands.

    \b
    Examples:
      queuectl enqueue "echo 'Hello World'"
      queuectl start --count 2 --timeout 10
      queuectl status
      queuectl dlq list
    """
    if ctx.get_parameter_source("storage_path") is click.core.ParameterSource.DEFAULT:
        storage_path = os.environ.get("QUEUECTL_REDIS_URL") or storage_path
    if not storage_path.strip():
        raise click.BadParameter("must not be empty", param_hint="--storage-path")
    if storage_path.startswith(("redis://", "rediss://")):
        from .core.backends.redis_backend import SecretURL
        storage_path = SecretURL(storage_path)  # `config` and logs show it without the password
    app = App(storage_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _csv(value: str | None, kind: type = str, hint: str = "", empty_ok: bool = False) -> list[Any] | None:
    """'a,b' -> ['a', 'b'] for list-valued options; None when the option was not given; [] for ''
    where `empty_ok` (`--no-retry-on ''`: this job retries whatever the configured list says)."""
    if value is None:
        return None
    if empty_ok and not value.strip():
        return []
    parts = [p.strip() for p in value.split(",")]
    if not all(parts):  # `--after ''` or `2,,3`: a slip, not "nothing"
        raise click.BadParameter(f"'{value}' has an empty item", param_hint=hint or None)
    try:
        if kind is not str and not value.isascii():
            raise ValueError(value)  # int() takes any script's digits; the settings take ASCII ones
        return [kind(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers", param_hint=hint) from None


@cli.command()
@click.argument("command", required=False)
@click.option("--max-retries", type=Whole(0, 1000), metavar="N",
              help="Retries after the first attempt (default: config max_retries).")
@click.option("--priority", type=Integer(), metavar="N", help="Higher runs first (default 0); FIFO within a priority.")
@click.option("--run-at", metavar="TIME", help="Not before this ISO 8601 time (no zone: local time).")
@click.option("--delay", metavar="DURATION", help="Not before this long from now: 90s, 5m, 2h, 1d.")
@click.option("--timeout", type=Integer(), metavar="SECONDS",
              help="This job's timeout (0 = none; default job_timeout).")
@click.option("--no-retry-on", metavar="CODES", help="Exit codes that go straight to the DLQ, e.g. 2,64.")
@click.option("--after", metavar="IDS", help="Run only after these jobs completed (ids or prefixes, comma-separated).")
@click.option("--unique-key", metavar="KEY", help="Add nothing if a job with this key is waiting or running.")
# utf-8-sig: a byte-order mark that an editor put first is not part of the first job
@click.option("--file", "spec_file", type=click.File("r", encoding="utf-8-sig", errors="strict"),
              metavar="FILE", help="Add many jobs: one JSON spec or command per line ('-' for stdin).")
@click.option("--wait", is_flag=True, help="Block until the job ends; print its output; exit with its exit code.")
@JSON
@pass_app
def enqueue(app: App, command: str | None, spec_file: Any, wait: bool, as_json: bool, **options: Any) -> None:
    """Add a job: a shell COMMAND, or a JSON job spec.

    \b
    Examples:
      queuectl enqueue "echo 'Hello World'"
      queuectl enqueue "curl -fsS https://example.com" --max-retries 5
      queuectl enqueue '{"id":"job1","command":"sleep 2","max_retries":3}'
      queuectl enqueue "make report" --priority 10 --delay 5m --after job1
      queuectl enqueue --file jobs.jsonl      # all or nothing
      queuectl enqueue "make test" --wait     # exit code of the job
    """
    options["no_retry_on"] = _csv(options["no_retry_on"], int, "--no-retry-on", empty_ok=True)
    options["after"] = _csv(options["after"], hint="--after")
    if spec_file is not None:
        if command is not None or wait or any(v is not None for v in options.values()):
            raise click.UsageError("--file takes no COMMAND and no other option (put them in the JSON lines)")
        jobs = app.manager.enqueue_many(_read_lines(spec_file))
        if as_json:
            _emit({"enqueued": len(jobs), "ids": [j.id for j in jobs]})
        else:
            click.echo(f"Enqueued {len(jobs)} job(s)")
        return
    if command is None:
        raise click.UsageError("Missing argument 'COMMAND'.")
    if wait and as_json:
        raise click.UsageError("--wait prints the job's own output; it cannot be combined with --json")
    job, existing = app.manager.submit(command, **options)
    if as_json:
        _emit({"id": job.id, "command": job.command, "state": job.state.value, "existing": existing})
    elif existing:
        click.echo(f"Job already queued\n   ID: {job.id}\n   State: {job.state.value}", err=wait)
    else:
        click.echo(f"Job enqueued successfully!\n   ID: {job.id}\n   Command: {job.command}", err=wait)
        if job.state is JobState.DEAD:  # a dependency is in the DLQ: the job comes back once none is
            click.echo(f"   State: dead ({job.last_error}); it waits for that job's retry", err=wait)
    if wait:
        _wait_and_exit(app, job.id)


def _wait_and_exit(app: App, job_id: str) -> None:
    """`enqueue --wait`: the job's output on our stdout/stderr, its exit code as ours."""
    if not app.manager.managers():
        click.echo("Waiting for a worker: none is running (start one with `queuectl start`)", err=True)
    job = app.manager.wait(job_id)
    if job.attempts:
        _, out, err = app.manager.output(job)
        _copy_file(out, sys.stdout.buffer)
        _copy_file(err, sys.stderr.buffer)
    last = job.history[-1] if job.history else {}
    if job.state is JobState.COMPLETED:
        sys.exit(0)
    if last.get("timed_out"):
        sys.exit(124)
    code = job.exit_code
    sys.exit(code if isinstance(code, int) and 0 < code < 256 else EXIT_RUNTIME)


def _copy_file(path: str, stream: Any) -> None:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(65536):
                stream.write(chunk)
        stream.flush()
    except FileNotFoundError:
        pass


def _read_lines(stream: Any) -> list[str]:
    try:
        return stream.read().splitlines()
    except UnicodeDecodeError as e:
        raise click.BadParameter(f"not UTF-8 text ({e.reason})", param_hint="--file") from None


def _start(app: App, count: int | None, timeout: float | None, detach: bool = False) -> None:
    manager = app.manager
    count = count or manager.config.worker_count
    if detach:
        pid, log_path = _detach(app, count, timeout)
        click.echo(f"Started worker manager in the background (pid {pid})\n   Log: {log_path}")
        return
    from .core.worker import WorkerPool, setup_logging
    setup_logging(manager.config.log_level)
    pool = WorkerPool(manager, count, timeout, launched_at=LAUNCHED_AT)
    pool.install_signal_handlers()

    def started() -> None:  # called once the housekeeping is done: never before a store error
        if timeout:
            click.echo(f"Started {count} worker(s) for {_num(timeout)} seconds")
            click.echo("Workers will auto-stop... (Ctrl+C to stop sooner)")
        else:
            click.echo(f"Started {count} worker(s). Press Ctrl+C or run 'queuectl stop' to stop.")
        sys.stdout.flush()

    pool.run(on_ready=started)


def _detach(app: App, count: int, timeout: float | None) -> tuple[int, str]:
    """Starts `start` again in its own session, logging to a file; waits until it is listed."""
    from .core.utils.fs import new_private_file
    from .core.utils.proc import spawn_detached
    log_path = new_private_file(app.manager.storage.log_dir(), f"manager-{time.strftime('%Y%m%d-%H%M%S')}", ".log")
    argv = [sys.executable, "-m", "queuectl", "start", "--count", str(count)]
    if timeout:
        argv += ["--timeout", str(timeout)]
    # the store travels in the environment, not argv: `ps` shows argv to every user
    pid = spawn_detached(argv, log_path, {STORAGE_ENV: str.__str__(app.storage_path)})
    deadline = time.monotonic() + DETACH_WAIT
    while time.monotonic() < deadline:
        if any(m.pid == pid for m in app.manager.managers()):
            return pid, log_path
        time.sleep(0.05)
    raise QueuectlError(f"the background manager did not start; see {log_path}")


def _stop(app: App, wait: bool = False, force: bool = False) -> None:
    running = app.manager.request_stop(force)
    if not running:
        click.echo("No worker manager running")
        return
    click.echo("Stopping all workers..." + (" (forced: running jobs go back to pending)" if force else ""))
    what = "end their current job" if force else "finish their current job"
    for m in running:
        click.echo(f"   Manager pid {m.pid}: {m.workers} worker(s) {what} and exit")
    if wait:
        began = time.monotonic()
        while app.manager.managers():
            time.sleep(0.1)
        click.echo(f"All workers stopped after {time.monotonic() - began:.1f}s")


COUNT = click.option("--count", type=Whole(1, 128), metavar="N",
                     help="Worker processes (default: config worker_count).")
class Seconds(click.ParamType):
    """A finite, positive number of seconds."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            if isinstance(value, str) and not value.isascii():
                raise ValueError(value)  # float() reads any script's digits; the rest takes ASCII ones
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number of seconds", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"'{value}' is not a positive, finite number of seconds", param, ctx)
        if number > MAX_DELAY:
            self.fail(f"'{value}' seconds is more than ten years", param, ctx)
        return number


RUN_FOR = click.option("--timeout", type=Seconds(), metavar="SECONDS",
                       help="Stop after this many seconds, letting running jobs finish.")


DETACH = click.option("--detach", is_flag=True, help="Run in the background; print its pid and log file.")
WAIT = click.option("--wait", is_flag=True, help="Return only when every worker has exited.")
FORCE = click.option("--force", is_flag=True, help="End running jobs at once; they go back to pending.")


@cli.command()
@COUNT
@RUN_FOR
@DETACH
@pass_app
def start(app: App, count: int | None, timeout: float | None, detach: bool) -> None:
    """Run workers in the foreground until Ctrl+C, SIGTERM or `queuectl stop`.

    \b
    Examples:
      queuectl start --count 2             # until stopped
      queuectl start --count 2 --timeout 10
      queuectl start --count 4 --detach    # in the background
    """
    _start(app, count, timeout, detach)


@cli.command()
@WAIT
@FORCE
@pass_app
def stop(app: App, wait: bool, force: bool) -> None:
    """Ask every running `start` to finish its current jobs and exit.

    \b
    Examples:
      queuectl stop
      queuectl stop --wait
      queuectl stop --force
    """
    _stop(app, wait, force)


@cli.group()
def worker() -> None:
    """Worker commands (the same as `start` and `stop`).

    \b
    Examples:
      queuectl worker start --count 3
      queuectl worker stop
    """


@worker.command("start")
@COUNT
@RUN_FOR
@DETACH
@pass_app
def worker_start(app: App, count: int | None, timeout: float | None, detach: bool) -> None:
    """Same as `queuectl start`.

    \b
    Example:
      queuectl worker start --count 3
    """
    _start(app, count, timeout, detach)


@worker.command("stop")
@WAIT
@FORCE
@pass_app
def worker_stop(app: App, wait: bool, force: bool) -> None:
    """Same as `queuectl stop`.

    \b
    Example:
      queuectl worker stop
    """
    _stop(app, wait, force)


@cli.command()
@JSON
@click.option("--watch", is_flag=True, help="Redraw until Ctrl+C (plain lines when not a terminal).")
@click.option("--interval", type=Seconds(), default=1.0, show_default=True, help="Seconds between redraws.")
@pass_app
def status(app: App, as_json: bool, watch: bool, interval: float) -> None:
    """Show job counts by state and the running worker managers.

    \b
    Examples:
      queuectl status
      queuectl status --watch --interval 0.5
      queuectl status --json
    """
    if as_json and watch:
        raise click.UsageError("--watch cannot be combined with --json")
    if as_json:
        _emit(_status_data(app))
    elif watch:
        _watch(app, interval)
    else:
        click.echo(_status_text(app))


def _status_data(app: App) -> dict[str, Any]:
    counts = app.manager.counts()
    return {"counts": {s.value: n for s, n in counts.items()}, "total": sum(counts.values()),
            "managers": [{"pid": m.pid, "workers": m.workers, "host": m.host,
                          "uptime_seconds": round(time.time() - m.started_at, 1)} for m in app.manager.managers()]}


def _status_text(app: App, extra: tuple[str, ...] = ()) -> str:
    counts = app.manager.counts()
    managers = app.manager.managers()
    lines = ["QueueCTL System Status", "=" * 40]
    lines += [f"{label:<12}{counts[state]}" for label, state in STATUS_ROWS]
    lines += [f"{'Total':<12}{sum(counts.values())}", "=" * 40, *extra]
    if not managers:
        lines.append("No worker manager running")
    for m in managers:
        lines.append(f"Manager pid {m.pid}: {m.workers} worker(s), up {_uptime(m.started_at)}")
    return "\n".join(lines)


def _watch(app: App, interval: float) -> None:
    """Redraws in place on a terminal (cursor home, overwrite, clear the rest: no flicker)."""
    tty = sys.stdout.isatty()
    try:
        while True:
            report = app.manager.metrics()
            jobs = report["jobs"]
            done = jobs["completed"] + jobs["dead"]
            total = sum(jobs.values())
            extra = (f"Throughput  {report['throughput_per_second']:.2f} jobs/s (last 5 min)",
                     f"Progress    {done}/{total} finished" + (f" ({100 * done // total}%)" if total else ""))
            text = _status_text(app, extra)
            if tty:
                click.echo("\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J", nl=False)
            else:
                click.echo(f"{time.strftime('%H:%M:%S')} " + " ".join(f"{k}={v}" for k, v in jobs.items())
                           + f" throughput={report['throughput_per_second']}/s")
            time.sleep(interval)
    except KeyboardInterrupt:
        if tty:
            click.echo()


@cli.command("list")
@click.option("--state", type=click.Choice(STATES, case_sensitive=False), help="Only jobs in this state.")
@click.option("--wide", is_flag=True, help="Also show priority, due time, dependencies and last error.")
@click.option("--limit", type=Whole(1), default=LIST_LIMIT, show_default=True, help="Newest N jobs.")
@click.option("--offset", type=Whole(0), default=0, help="Skip the newest N jobs first.")
@JSON
@pass_app
def list_jobs(app: App, state: str | None, wide: bool, limit: int, offset: int, as_json: bool) -> None:
    """List the newest jobs (oldest first among them).

    \b
    Examples:
      queuectl list
      queuectl list --state pending
      queuectl list --wide --limit 50 --offset 50
      queuectl list --json
    """
    total, jobs = app.manager.page(JobState(state.lower()) if state else None, limit, offset)
    if as_json:
        _emit({"total": total, "limit": limit, "offset": offset,
               "jobs": [j.public_dict() for j in jobs]})
        return
    if not jobs:
        click.echo(f"No {state.lower() + ' ' if state else ''}jobs found")
        return
    headers = ["ID", "Command", "State", "Attempts", "Max Retries"]
    rows = [[short_id(j.id), _cut(j.command, COMMAND_WIDTH), j.state.value, j.attempts, j.max_retries] for j in jobs]
    if wide:
        headers += ["Priority", "Due", "After", "Last Error"]
        for row, j in zip(rows, jobs):
            row += [j.priority, _due(j), ",".join(map(short_id, j.after)), _cut(j.last_error or "", ERROR_WIDTH)]
    click.echo(_table(rows, headers, numbers=(3, 4, 5)))
    older = max(0, total - offset - len(jobs))
    if older:
        click.echo(f"... {older} older job(s) not shown (use --limit and --offset)")


def _due(job: Any) -> str:
    if not job.state.runnable:
        return ""
    if job.blocked:
        return "after dependencies"
    from datetime import datetime
    if job.due_at <= time.time():
        return "now"
    return datetime.fromtimestamp(job.due_at).astimezone().isoformat(timespec="seconds")


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...", shell_complete=_complete_ids)
@pass_app
def cancel(app: App, job_ids: tuple[str, ...]) -> None:
    """Move waiting jobs to the DLQ as `Cancelled`; a running one is ended first.

    \b
    Example:
      queuectl cancel 08232c92 job1
    """
    # Every id is looked up, and its job's state checked, before any job is touched: a typo or
    # a finished job among them cancels nothing. Only a race with a worker or another command
    # can still leave some cancelled and others not (each is reported).
    ids = list(dict.fromkeys(app.manager.cancellable(ref).id for ref in job_ids))
    failures = 0
    for job_id in ids:
        try:
            job = app.manager.cancel(job_id)
            click.echo(f"Job {job.id} cancelled")
        except QueuectlError as e:
            if len(ids) == 1:
                raise
            click.echo(f"Error: {e}", err=True)
            failures += 1
    if failures:
        sys.exit(EXIT_RUNTIME)


def _confirm(yes: bool, question: str) -> None:
    """Asks on a terminal; without one, refuses unless --yes was given."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("refusing to delete without confirmation: add --yes")
    click.confirm(question, abort=True)


@cli.command()
@click.option("--state", required=True, type=click.Choice(["completed", "dead"], case_sensitive=False))
@click.option("--older-than", metavar="AGE", help="Only jobs finished more than this long ago: 7d, 12h, 30m.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def purge(app: App, state: str, older_than: str | None, yes: bool) -> None:
    """Delete completed or dead jobs and their output.

    \b
    Examples:
      queuectl purge --state completed --older-than 7d --yes
      queuectl purge --state dead
    """
    from .core.job import parse_duration
    age = parse_duration(older_than, "--older-than") if older_than is not None else None
    _confirm(yes, f"Delete {state} jobs{' older than ' + older_than if older_than else ''}?")
    removed = app.manager.purge(JobState(state.lower()), age)
    click.echo(f"Removed {removed} {state.lower()} job(s)")


@cli.command()
@click.argument("job_id", metavar="ID", shell_complete=_complete_ids)
@JSON
@pass_app
def show(app: App, job_id: str, as_json: bool) -> None:
    """Print every field of a job and a table of its attempts.

    \b
    Examples:
      queuectl show 08232c92
      queuectl show job1 --json
    """
    job = app.manager.resolve(job_id)
    data = job.public_dict()
    if as_json:
        _emit(data)
        return
    history = data.pop("history")
    for key, value in data.items():
        shown = ",".join(str(v) for v in value) if isinstance(value, list) else value
        click.echo(f"{key:<25}{'' if shown is None else _shown(str(shown))}")
    if history:
        rows = [[h.get("attempt"), h.get("started_at"), h.get("finished_at"), _secs(h.get("duration")),
                 _exit_text(h), "yes" if h.get("timed_out") else "", h.get("worker") or "",
                 _cut(h.get("error") or "", ERROR_WIDTH)] for h in history]
        click.echo()
        click.echo(_table(rows, ["Attempt", "Started", "Finished", "Duration", "Exit", "Timed Out",
                              "Worker", "Error"], numbers=(0,)))


def _secs(value: Any) -> str:
    return "" if value is None else f"{value:.3f}s"


def _exit_text(entry: dict[str, Any]) -> str:
    code = entry.get("exit_code")
    if code is None:
        return ""
    return f"signal {-code}" if code < 0 else str(code)


@cli.command()
@click.argument("job_id", metavar="ID", shell_complete=_complete_ids)
@click.option("--attempt", type=Whole(1), help="Which attempt (default: the latest).")
@click.option("--stderr", "stream", flag_value="stderr", help="Show stderr instead of stdout.")
@click.option("--all", "stream", flag_value="all", help="Show stdout and stderr, labelled.")
@click.option("--follow", "-f", is_flag=True, help="Stream a running job's output until it ends.")
@click.option("--tail", type=Whole(0), help="Only the last N lines.")
@pass_app
def logs(app: App, job_id: str, attempt: int | None, stream: str | None, follow: bool, tail: int | None) -> None:
    """Print what a job's attempt wrote (stdout by default).

    \b
    Examples:
      queuectl logs 08232c92
      queuectl logs 08232c92 --stderr --attempt 1
      queuectl logs 08232c92 --all --tail 20
      queuectl logs 08232c92 --follow
    """
    job = app.manager.resolve(job_id)
    number, out, err = app.manager.output(job, attempt)
    paths = {"stderr": [("", err)], "all": [("stdout", out), ("stderr", err)]}.get(stream or "", [("", out)])
    if follow:
        if len(paths) > 1:
            raise click.UsageError("--follow streams one stream: stdout, or stderr with --stderr")
        _follow(app, job.id, number, paths[0][1])
        return
    for label, path in paths:
        if label:
            click.echo(f"==> {label} (attempt {number}) <==")
        data = _read_output(path, tail)
        sys.stdout.flush()
        # the bytes the command wrote: not decoded, nothing replaced (a final newline added)
        sys.stdout.buffer.write(data + b"\n" if data and not data.endswith(b"\n") else data)
        sys.stdout.buffer.flush()


def _read_output(path: str, tail: int | None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return b""
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail else b""
    return data


def _follow(app: App, job_id: str, attempt: int, path: str) -> None:
    """Prints new output as it arrives, until the attempt is over (see `Follower`)."""
    from .core.output import Follower
    follower = Follower(path)
    while True:
        job = app.manager.storage.get(job_id)
        running = job is not None and job.state is JobState.PROCESSING and job.attempts == attempt
        sys.stdout.buffer.write(follower.poll())
        if not running:
            sys.stdout.buffer.write(follower.end())
        sys.stdout.flush()
        if not running:
            return
        time.sleep(0.2)


@cli.command()
@JSON
@click.option("--prometheus", is_flag=True, help="The Prometheus text exposition format.")
@pass_app
def metrics(app: App, as_json: bool, prometheus: bool) -> None:
    """Throughput, success rate, run and wait times, failures by exit code.

    \b
    Examples:
      queuectl metrics
      queuectl metrics --json
      queuectl metrics --prometheus > /var/lib/node_exporter/queuectl.prom
    """
    if as_json and prometheus:
        raise click.UsageError("choose --json or --prometheus")
    if prometheus:
        click.echo(app.manager.prometheus(), nl=False)
        return
    report = app.manager.metrics()
    if as_json:
        _emit(report)
        return
    jobs = ", ".join(f"{k} {v}" for k, v in report["jobs"].items())
    rate = report["success_rate"]
    lines = [
        f"Jobs:              {jobs}",
        f"Last minute:       {report['completed_last_minute']} completed, {report['failed_last_minute']} failed",
        f"Last hour:         {report['completed_last_hour']} completed, {report['failed_last_hour']} failed",
        f"Throughput:        {report['throughput_per_second']} jobs/s (last 5 minutes)",
        f"Success rate:      {'-' if rate is None else f'{rate * 100:.1f}%'} of finished attempts",
        f"Run time (ms):     {_dist(report['run_time_ms'])}",
        f"Queue wait (ms):   {_dist(report['queue_wait_ms'])}",
        "Failures by exit:  " + (", ".join(f"{k}: {v}" for k, v in report["failures_by_exit_code"].items()) or "none"),
        f"Oldest pending:    {_age(report['oldest_pending_age_seconds'])}",
        f"Managers/workers:  {report['managers']} / {report['workers']}",
    ]
    click.echo("\n".join(lines))


def _dist(h: dict[str, Any]) -> str:
    if not h["count"]:
        return "no data"
    return f"p50 {h['p50']}  p95 {h['p95']}  max {h['max']}  ({h['count']} samples)"


def _age(seconds: float | None) -> str:
    return "none waiting" if seconds is None else f"{seconds:.1f}s"


@cli.group()
def dlq() -> None:
    """Inspect and retry jobs in the dead letter queue.

    \b
    Examples:
      queuectl dlq list
      queuectl dlq retry 08232c92
    """


@dlq.command("list")
@JSON
@pass_app
def dlq_list(app: App, as_json: bool) -> None:
    """List dead jobs with their last error.

    \b
    Examples:
      queuectl dlq list
      queuectl dlq list --json
    """
    jobs = app.manager.list_jobs(JobState.DEAD)
    if as_json:
        _emit({"total": len(jobs), "jobs": [j.public_dict() for j in jobs]})
        return
    if not jobs:
        click.echo("DLQ is empty")
        return
    rows = [[j.id, _cut(j.command, COMMAND_WIDTH), j.attempts, _cut(j.last_error or "", ERROR_WIDTH)]
            for j in jobs]
    click.echo(_table(rows, ["ID", "Command", "Attempts", "Last Error"], numbers=(2,)))


@dlq.command("retry")
@click.argument("job_id", required=False, shell_complete=_complete_ids)
@click.option("--all", "retry_all", is_flag=True, help="Retry every job in the DLQ.")
@pass_app
def dlq_retry(app: App, job_id: str | None, retry_all: bool) -> None:
    """Move a dead job back to pending with its attempts reset (ID or unique prefix).

    \b
    Examples:
      queuectl dlq retry 08232c92
      queuectl dlq retry --all
    """
    if retry_all == (job_id is not None):
        raise click.UsageError("give one job ID or --all")
    if retry_all:
        done = app.manager.retry_all_dead()
        click.echo(f"Moved {len(done.retried)} job(s) from DLQ to pending queue")
        if done.left:
            click.echo(f"Left {len(done.left)} job(s) in the DLQ:")
            for _job_id, reason in done.left:
                click.echo(f"  {_shown(reason)}")
        return
    job = app.manager.retry_dead(job_id)
    click.echo(f"Job {job.id} moved from DLQ to pending queue")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def dlq_purge(app: App, yes: bool) -> None:
    """Delete every job in the DLQ.

    \b
    Example:
      queuectl dlq purge --yes
    """
    _confirm(yes, "Delete every job in the DLQ?")
    removed = app.manager.purge(JobState.DEAD)
    click.echo(f"Removed {removed} dead job(s)")


@cli.group(invoke_without_command=True)
@click.option("--key", help="Setting to change (with --value).")
@click.option("--value", help="New value for --key.")
@JSON
@click.pass_context
def config(ctx: click.Context, key: str | None, value: str | None, as_json: bool) -> None:
    """Show or change settings (stored in the data directory).

    \b
    Examples:
      queuectl config
      queuectl config --key max_retries --value 5
      queuectl config set backoff-base 3
      queuectl config get max_retries
      queuectl config get max_retries --json
    """
    if ctx.invoked_subcommand is not None:
        if key is not None or value is not None:
            raise click.UsageError("--key/--value cannot be combined with a subcommand")
        ctx.meta["config_json"] = as_json  # `config --json get KEY` as `config get KEY --json`
        return
    app: App = ctx.obj
    if as_json and key is None and value is None:
        _emit(dict(app.manager.config.items()))
        return
    if key is None and value is None:
        for k, v in app.manager.config.items():
            click.echo(f"{k} = {Config.format(v)}")
        return
    if key is None or value is None:
        raise click.UsageError("--key and --value go together")
    _set(app, key, value, as_json)


def _set(app: App, key: str, value: str, as_json: bool) -> None:
    key, typed = app.manager.set_config(key, value)
    if as_json or click.get_current_context().meta.get("config_json"):
        _emit({"key": key, "value": typed})
    else:
        click.echo(f"Set {key} = {Config.format(typed)}")


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@JSON
@pass_app
def config_set(app: App, key: str, value: str, as_json: bool) -> None:
    """Change one setting (dashes or underscores).

    \b
    Example:
      queuectl config set max-retries 5
    """
    _set(app, key, value, as_json)


@config.command("get")
@click.argument("key")
@JSON
@pass_app
def config_get(app: App, key: str, as_json: bool) -> None:
    """Print one setting's value.

    \b
    Example:
      queuectl config get max_retries
    """
    from .core.utils.config import normalize_key
    key = normalize_key(key)
    value = getattr(app.manager.config, key)
    if as_json or click.get_current_context().meta.get("config_json"):
        _emit({"key": key, "value": value})
    else:
        click.echo(Config.format(value))


def _table(rows: list[list[Any]], headers: list[str], numbers: tuple[int, ...] = ()) -> str:
    """A text table; only the columns in `numbers` are read as numbers (right-aligned).

    tabulate reads any cell that parses as a number as one, so a short id like `7538e158`
    came out as `7.538e+161` and `01234567` lost its zero; commands and errors alike.
    """
    from tabulate import tabulate
    text = [i for i in range(len(headers)) if i not in numbers]
    return tabulate(rows, headers=headers, disable_numparse=text)


def _cut(text: str, width: int) -> str:
    """Job text in a table cell: on one line (a tab or newline makes its whitespace one space:
    raw, a tab broke the columns), escaped, and cut to `width`."""
    text = _shown(" ".join(text.split()) if "\n" in text or "\t" in text else text)
    return text if len(text) <= width else text[: width - 3] + "..."


def _shown(text: str) -> str:
    """Job text as it goes into a listing (see `printable`): tabs and newlines stay."""
    return printable(text)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _uptime(started: float) -> str:
    secs = int(max(0, time.time() - started))
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def main() -> None:
    cli.main()

from .dashboard.command import dashboard  # noqa: E402  (Flask loads only when it runs)

cli.add_command(dashboard)
