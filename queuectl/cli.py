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
from .core.job import JobState
from .core.utils.config import DEFAULT_STORAGE_PATH, STORAGE_ENV, Config

# Columns are cut to these widths so a table stays readable in a terminal.
COMMAND_WIDTH = 50
ERROR_WIDTH = 60
STATUS_ROWS = (("Pending", JobState.PENDING), ("Processing", JobState.PROCESSING),
               ("Completed", JobState.COMPLETED), ("Failed", JobState.FAILED),
               ("Dead (DLQ)", JobState.DEAD))
STATES = [s.value for s in JobState]
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
                message += ("" if message.endswith(".") else ".") + f" Try '{e.ctx.command_path} --help'."
            _fail(message, EXIT_USAGE)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.exceptions.Abort:
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
    message = " ".join(str(message).split())  # one line, whatever the cause
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
    if not storage_path.strip():
        raise click.BadParameter("must not be empty", param_hint="--storage-path")
    app = App(storage_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _csv(value: str | None, kind: type = str, hint: str = "") -> list[Any] | None:
    """'a,b' -> ['a', 'b'] for list-valued options; None when the option was not given."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers", param_hint=hint) from None


@cli.command()
@click.argument("command", required=False)
@click.option("--max-retries", type=click.IntRange(0, 1000), metavar="N",
              help="Retries after the first attempt (default: config max_retries).")
@click.option("--priority", type=int, metavar="N", help="Higher runs first (default 0); FIFO within a priority.")
@click.option("--run-at", metavar="TIME", help="Not before this ISO 8601 time (no zone: local time).")
@click.option("--delay", metavar="DURATION", help="Not before this long from now: 90s, 5m, 2h, 1d.")
@click.option("--timeout", type=int, metavar="SECONDS", help="This job's timeout (0 = none; default job_timeout).")
@click.option("--no-retry-on", metavar="CODES", help="Exit codes that go straight to the DLQ, e.g. 2,64.")
@click.option("--after", metavar="IDS", help="Run only after these jobs completed (ids or prefixes, comma-separated).")
@click.option("--unique-key", metavar="KEY", help="Add nothing if a job with this key is waiting or running.")
@click.option("--file", "spec_file", type=click.File("r", encoding="utf-8", errors="strict"),
              metavar="FILE", help="Add many jobs: one JSON spec or command per line ('-' for stdin).")
@pass_app
def enqueue(app: App, command: str | None, spec_file: Any, **options: Any) -> None:
    """Add a job: a shell COMMAND, or a JSON job spec.

    \b
    Examples:
      queuectl enqueue "echo 'Hello World'"
      queuectl enqueue "curl -fsS https://example.com" --max-retries 5
      queuectl enqueue '{"id":"job1","command":"sleep 2","max_retries":3}'
      queuectl enqueue "make report" --priority 10 --delay 5m --after job1
      queuectl enqueue --file jobs.jsonl      # all or nothing
    """
    options["no_retry_on"] = _csv(options["no_retry_on"], int, "--no-retry-on")
    options["after"] = _csv(options["after"])
    if spec_file is not None:
        if command is not None or any(v is not None for v in options.values()):
            raise click.UsageError("--file takes no COMMAND and no other option (put them in the JSON lines)")
        jobs = app.manager.enqueue_many(_read_lines(spec_file))
        click.echo(f"Enqueued {len(jobs)} job(s)")
        return
    if command is None:
        raise click.UsageError("Missing argument 'COMMAND'.")
    job, existing = app.manager.submit(command, **options)
    if existing:
        click.echo(f"Job already queued\n   ID: {job.id}\n   State: {job.state.value}")
        return
    click.echo(f"Job enqueued successfully!\n   ID: {job.id}\n   Command: {job.command}")


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
    pool = WorkerPool(manager, count, timeout)
    pool.install_signal_handlers()
    if timeout:
        click.echo(f"Started {count} worker(s) for {_num(timeout)} seconds")
        click.echo("Workers will auto-stop... (Ctrl+C to stop sooner)")
    else:
        click.echo(f"Started {count} worker(s). Press Ctrl+C or run 'queuectl stop' to stop.")
    sys.stdout.flush()
    pool.run()


def _detach(app: App, count: int, timeout: float | None) -> tuple[int, str]:
    """Starts `start` again in its own session, logging to a file; waits until it is listed."""
    from .core.utils.proc import spawn_detached
    log_path = os.path.join(app.manager.storage.log_dir(), f"manager-{time.strftime('%Y%m%d-%H%M%S')}.log")
    argv = [sys.executable, "-m", "queuectl", "--storage-path", app.storage_path, "start", "--count", str(count)]
    if timeout:
        argv += ["--timeout", str(timeout)]
    pid = spawn_detached(argv, log_path)
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


COUNT = click.option("--count", type=click.IntRange(1, 128), metavar="N",
                     help="Worker processes (default: config worker_count).")
class Seconds(click.ParamType):
    """A finite, positive number of seconds."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number of seconds", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"'{value}' is not a positive, finite number of seconds", param, ctx)
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
@pass_app
def status(app: App) -> None:
    """Show job counts by state and the running worker managers.

    \b
    Example:
      queuectl status
    """
    counts = app.manager.counts()
    managers = app.manager.managers()
    lines = ["QueueCTL System Status", "=" * 40]
    lines += [f"{label:<12}{counts[state]}" for label, state in STATUS_ROWS]
    lines += [f"{'Total':<12}{sum(counts.values())}", "=" * 40]
    if not managers:
        lines.append("No worker manager running")
    for m in managers:
        lines.append(f"Manager pid {m.pid}: {m.workers} worker(s), up {_uptime(m.started_at)}")
    click.echo("\n".join(lines))


@cli.command("list")
@click.option("--state", type=click.Choice(STATES, case_sensitive=False), help="Only jobs in this state.")
@click.option("--wide", is_flag=True, help="Also show priority, due time, dependencies and last error.")
@pass_app
def list_jobs(app: App, state: str | None, wide: bool) -> None:
    """List jobs, oldest first.

    \b
    Examples:
      queuectl list
      queuectl list --state pending
      queuectl list --wide
    """
    from tabulate import tabulate
    jobs = app.manager.list_jobs(JobState(state.lower()) if state else None)
    if not jobs:
        click.echo(f"No {state.lower() + ' ' if state else ''}jobs found")
        return
    headers = ["ID", "Command", "State", "Attempts", "Max Retries"]
    rows = [[j.id[:8], _cut(j.command, COMMAND_WIDTH), j.state.value, j.attempts, j.max_retries] for j in jobs]
    if wide:
        headers += ["Priority", "Due", "After", "Last Error"]
        for row, j in zip(rows, jobs):
            row += [j.priority, _due(j), ",".join(a[:8] for a in j.after), _cut(j.last_error or "", ERROR_WIDTH)]
    click.echo(tabulate(rows, headers=headers))


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
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@pass_app
def cancel(app: App, job_ids: tuple[str, ...]) -> None:
    """Move waiting jobs to the DLQ as `Cancelled`; a running one is ended first.

    \b
    Example:
      queuectl cancel 08232c92 job1
    """
    failures = 0
    for ref in job_ids:
        try:
            job = app.manager.cancel(ref)
            click.echo(f"Job {job.id} cancelled")
        except QueuectlError as e:
            if len(job_ids) == 1:
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


@cli.group()
def dlq() -> None:
    """Inspect and retry jobs in the dead letter queue.

    \b
    Examples:
      queuectl dlq list
      queuectl dlq retry 08232c92
    """


@dlq.command("list")
@pass_app
def dlq_list(app: App) -> None:
    """List dead jobs with their last error.

    \b
    Example:
      queuectl dlq list
    """
    from tabulate import tabulate
    jobs = app.manager.list_jobs(JobState.DEAD)
    if not jobs:
        click.echo("DLQ is empty")
        return
    rows = [[j.id, _cut(j.command, COMMAND_WIDTH), j.attempts, _cut(j.last_error or "", ERROR_WIDTH)]
            for j in jobs]
    click.echo(tabulate(rows, headers=["ID", "Command", "Attempts", "Last Error"]))


@dlq.command("retry")
@click.argument("job_id", required=False)
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
        jobs = app.manager.retry_all_dead()
        click.echo(f"Moved {len(jobs)} job(s) from DLQ to pending queue")
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
@click.pass_context
def config(ctx: click.Context, key: str | None, value: str | None) -> None:
    """Show or change settings (stored in the data directory).

    \b
    Examples:
      queuectl config
      queuectl config --key max_retries --value 5
      queuectl config set backoff-base 3
      queuectl config get max_retries
    """
    if ctx.invoked_subcommand is not None:
        if key is not None or value is not None:
            raise click.UsageError("--key/--value cannot be combined with a subcommand")
        return
    app: App = ctx.obj
    if key is None and value is None:
        for k, v in app.manager.config.items():
            click.echo(f"{k} = {Config.format(v)}")
        return
    if key is None or value is None:
        raise click.UsageError("--key and --value go together")
    _set(app, key, value)


def _set(app: App, key: str, value: str) -> None:
    key, typed = app.manager.set_config(key, value)
    click.echo(f"Set {key} = {Config.format(typed)}")


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@pass_app
def config_set(app: App, key: str, value: str) -> None:
    """Change one setting (dashes or underscores).

    \b
    Example:
      queuectl config set max-retries 5
    """
    _set(app, key, value)


@config.command("get")
@click.argument("key")
@pass_app
def config_get(app: App, key: str) -> None:
    """Print one setting's value.

    \b
    Example:
      queuectl config get max_retries
    """
    from .core.utils.config import normalize_key
    click.echo(Config.format(getattr(app.manager.config, normalize_key(key))))


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= width else text[: width - 3] + "..."


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _uptime(started: float) -> str:
    secs = int(max(0, time.time() - started))
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def main() -> None:
    cli.main()
