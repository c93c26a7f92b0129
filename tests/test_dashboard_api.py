"""The dashboard's JSON API and pages through Flask's test client, on a temporary JSON store:
every route, paging, the DLQ actions, CSRF, token and read-only rules, escaping, headers."""
from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest
from click.testing import CliRunner

from queuectl.cli import cli
from queuectl.core.job import JobState
from queuectl.core.queue import QueueManager
from queuectl.core.storage import get_storage
from queuectl.core.worker import Worker

if not os.environ.get("CI"):
    pytest.importorskip("flask", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")

from queuectl.dashboard import create_app  # noqa: E402
from queuectl.dashboard.command import is_loopback  # noqa: E402
from queuectl.dashboard.data import OUTPUT_TAIL, minute_series, purge_one  # noqa: E402

XSS = "<script>alert(1)</script>"
ORIGIN = "http://localhost"


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def manager(data_dir):
    m = QueueManager(get_storage(str(data_dir)))
    yield m
    m.storage.close()


def run_all(manager: QueueManager) -> None:
    """Runs every due job once through a real worker (commands run in the shell)."""
    worker = Worker(manager, "worker-1")
    while worker.run_once():
        pass
    worker.unregister()


@pytest.fixture
def jobs(manager):
    """One completed job with output on both streams, one dead job, one XSS job (dead too)."""
    ok = manager.enqueue("echo hello; echo oops >&2")
    dead = manager.enqueue("echo before; exit 3", max_retries=0)
    xss = manager.enqueue(f"echo '{XSS}'; echo '{XSS}' >&2; exit 1", max_retries=0)
    run_all(manager)
    return {"ok": ok.id, "dead": dead.id, "xss": xss.id}


def client_for(manager, **options):
    app = create_app(manager, **options)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture
def client(manager):
    return client_for(manager)


def csrf_of(client) -> str:
    """Opens the overview like a browser and returns the CSRF token its page carries."""
    page = client.get("/").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)


def post(client, path, token=None, origin=ORIGIN, **kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["X-CSRF-Token"] = token
    if origin is not None:
        headers["Origin"] = origin
    return client.post(path, headers=headers, **kwargs)


def cli_json(data_dir, *args):
    result = CliRunner().invoke(cli, ["--storage-path", str(data_dir), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def state_of(manager, job_id):
    job = manager.storage.get(job_id)
    return job.state.value if job else None


# -- reading -------------------------------------------------------------------------------
def test_status_is_the_cli_document(client, jobs, data_dir):
    got = client.get("/api/status")
    assert got.status_code == 200 and got.mimetype == "application/json"
    assert got.get_json() == cli_json(data_dir, "status")
    assert got.get_json()["counts"] == {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "dead": 2}


def test_jobs_pages_match_cli_list(client, manager, data_dir):
    manager.enqueue_many([f"echo {i}" for i in range(25)])
    first = client.get("/api/jobs?limit=10").get_json()
    assert first["total"] == 25 and first["limit"] == 10 and first["offset"] == 0
    assert [j["command"] for j in first["jobs"]] == [f"echo {i}" for i in range(15, 25)]
    second = client.get("/api/jobs?limit=10&offset=10").get_json()
    assert [j["command"] for j in second["jobs"]] == [f"echo {i}" for i in range(5, 15)]
    assert second == cli_json(data_dir, "list", "--limit", "10", "--offset", "10")
    last = client.get("/api/jobs?limit=10&offset=20").get_json()
    assert [j["command"] for j in last["jobs"]] == [f"echo {i}" for i in range(5)]
    assert client.get("/api/jobs?offset=30").get_json()["jobs"] == []
    assert client.get("/api/jobs").get_json()["limit"] == 200


def test_jobs_filter_by_state_and_bad_arguments(client, jobs):
    dead = client.get("/api/jobs?state=dead").get_json()
    assert dead["total"] == 2 and {j["id"] for j in dead["jobs"]} == {jobs["dead"], jobs["xss"]}
    assert client.get("/api/jobs?state=COMPLETED").get_json()["jobs"][0]["id"] == jobs["ok"]
    for query in ("state=sleeping", "limit=0", "limit=abc", "limit=5000", "offset=-1"):
        got = client.get(f"/api/jobs?{query}")
        assert got.status_code == 400, query
        assert "error" in got.get_json()


def test_job_document_prefix_and_errors(client, jobs, data_dir):
    got = client.get(f"/api/jobs/{jobs['dead']}").get_json()
    assert got == cli_json(data_dir, "show", jobs["dead"])
    assert got["state"] == "dead" and got["history"][0]["exit_code"] == 3
    assert client.get(f"/api/jobs/{jobs['dead'][:8]}").get_json()["id"] == jobs["dead"]
    missing = client.get("/api/jobs/nosuchjob")
    assert missing.status_code == 404 and "no job" in missing.get_json()["error"]
    assert client.get("/api/jobs/.hidden").status_code == 400


def test_output_of_each_attempt_and_stream(client, manager, tmp_path):
    counter = tmp_path / "runs"
    job = manager.enqueue(f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; "
                          "echo run-$n; echo to-stderr >&2; exit 1", max_retries=1)
    manager.set_config("backoff_base", 1)
    run_all(manager)
    time.sleep(1.1)  # the retry's due time
    run_all(manager)
    assert manager.storage.get(job.id).attempts == 2
    latest = client.get(f"/api/jobs/{job.id}/output").get_json()
    assert latest["attempt"] == 2 and latest["stream"] == "stdout" and latest["text"] == "run-2\n"
    assert client.get(f"/api/jobs/{job.id}/output?attempt=1").get_json()["text"] == "run-1\n"
    first_err = client.get(f"/api/jobs/{job.id}/output?attempt=1&stream=stderr").get_json()
    assert first_err == {"id": job.id, "attempt": 1, "stream": "stderr", "text": "to-stderr\n", "size": 10,
                         "truncated": False, "exists": True}
    assert client.get(f"/api/jobs/{job.id}/output?stream=both").status_code == 400
    assert client.get(f"/api/jobs/{job.id}/output?attempt=3").status_code == 404
    assert client.get(f"/api/jobs/{job.id}/output?attempt=x").status_code == 400


def test_output_is_capped_to_its_tail(client, manager):
    job = manager.enqueue("head -c 100000 /dev/zero | tr '\\0' a; printf END")
    run_all(manager)
    got = client.get(f"/api/jobs/{job.id}/output").get_json()
    assert got["size"] == 100003 and got["truncated"] is True
    assert len(got["text"]) == OUTPUT_TAIL and got["text"].endswith("aaaEND")
    page = client.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "the last 64 KiB shown" in page and "a" * 1000 + "END" in page


def test_output_of_a_job_that_never_ran(client, manager):
    job = manager.enqueue("true")
    got = client.get(f"/api/jobs/{job.id}/output")
    assert got.status_code == 404 and "has not run yet" in got.get_json()["error"]
    assert "The job has not run yet" in client.get(f"/jobs/{job.id}").get_data(as_text=True)


def test_metrics_and_series(client, jobs, manager):
    report = client.get("/api/metrics").get_json()
    assert set(report) == set(manager.metrics())
    assert report["jobs"]["dead"] == 2 and report["totals"]["completed_total"] == 1
    before = time.time()
    series = client.get("/api/metrics/series").get_json()
    after = time.time()
    assert len(series["completed"]) == len(series["failed"]) == 60 and series["step_seconds"] == 60
    assert sum(series["completed"]) == 1 and sum(series["failed"]) == 2
    # the minute may end during the request
    assert series["start"] in {(int(t // 60) - 59) * 60 for t in (before, after)}


def test_minute_series_is_a_pure_sixty_point_window():
    now = 6000 * 60 + 30  # inside minute 6000
    minutes = {"6000": [3, 1], "5941": [2, 0], "5940": [9, 9], "6001": [5, 5], "junk": [1], "5999": "x"}
    got = minute_series(minutes, now)
    assert got["start"] == 5941 * 60 and len(got["completed"]) == 60
    assert got["completed"][0] == 2 and got["completed"][-1] == 3 and got["failed"][-1] == 1
    assert sum(got["completed"]) == 5 and sum(got["failed"]) == 1
    assert minute_series({}, now, count=5) == {"start": 5996 * 60, "step_seconds": 60,
                                               "completed": [0] * 5, "failed": [0] * 5}


def test_dlq_list_and_workers(client, jobs, manager, data_dir):
    dlq = client.get("/api/dlq").get_json()
    cli_dlq = cli_json(data_dir, "dlq", "list")
    assert dlq["total"] == cli_dlq["total"] == 2 and dlq["jobs"] == cli_dlq["jobs"]
    assert client.get("/api/dlq?limit=1").get_json()["jobs"][0]["id"] == jobs["xss"]
    assert client.get("/api/workers").get_json() == {"managers": [], "running_total": 0, "running": []}
    running = manager.enqueue("sleep 1")
    claimed = manager.claim("worker-test-1")
    assert claimed.id == running.id
    workers = client.get("/api/workers").get_json()
    assert workers["running"][0]["worker"] == "worker-test-1" and workers["running"][0]["job"]["id"] == running.id
    page = client.get("/workers").get_data(as_text=True)
    assert "worker-test-1" in page and "No worker manager running" in page


# -- changing: the DLQ actions ---------------------------------------------------------------
def test_retry_and_purge_one(client, jobs, manager):
    token = csrf_of(client)
    got = post(client, f"/api/dlq/{jobs['dead'][:8]}/retry", token)
    assert got.status_code == 200 and got.get_json()["state"] == "pending"
    assert state_of(manager, jobs["dead"]) == "pending"
    again = post(client, f"/api/dlq/{jobs['dead']}/retry", token)
    assert again.status_code == 409 and "not in the DLQ" in again.get_json()["error"]
    gone = post(client, f"/api/dlq/{jobs['xss']}/purge", token)
    assert gone.get_json() == {"purged": 1, "id": jobs["xss"]}
    assert state_of(manager, jobs["xss"]) is None
    assert post(client, f"/api/dlq/{jobs['ok']}/purge", token).status_code == 409
    assert post(client, "/api/dlq/nosuchjob/purge", token).status_code == 404
    assert state_of(manager, jobs["ok"]) == "completed"


def test_retry_all_and_purge_all(client, manager):
    ids = [manager.enqueue("exit 1", max_retries=0).id for _ in range(3)]
    run_all(manager)
    token = csrf_of(client)
    got = post(client, "/api/dlq/retry-all", token).get_json()
    assert got["retried"] == 3 and sorted(got["ids"]) == sorted(ids) and got["left"] == []
    assert manager.counts()[JobState.PENDING] == 3
    run_all(manager)
    assert post(client, "/api/dlq/purge", token).get_json() == {"purged": 3}
    assert manager.counts()[JobState.DEAD] == 0 and manager.storage.get(ids[0]) is None


def test_retry_all_names_the_jobs_it_left(client, manager):
    first, _ = manager.submit('{"id":"A","command":"true"}', unique_key="K")
    manager.cancel(first.id)
    manager.submit('{"id":"B","command":"true"}', unique_key="K")
    got = post(client, "/api/dlq/retry-all", csrf_of(client)).get_json()
    assert got["retried"] == 0
    assert got["left"] == [{"id": "A", "reason": "job B holds unique key 'K' (pending): not retrying A"}]


def test_purge_one_helper_checks_the_state(manager, jobs):
    from queuectl.core.errors import InvalidStateError
    with pytest.raises(InvalidStateError):
        purge_one(manager, jobs["ok"])
    assert purge_one(manager, jobs["dead"]).id == jobs["dead"]
    assert manager.storage.get(jobs["dead"]) is None


def test_form_posts_redirect_back_with_a_message(client, jobs, manager):
    token = csrf_of(client)
    got = client.post(f"/api/dlq/{jobs['dead']}/retry", data={"csrf_token": token},
                      headers={"Origin": ORIGIN, "Accept": "text/html,*/*;q=0.8"})
    assert got.status_code == 303 and got.headers["Location"].endswith("/dlq")
    assert f"Job {jobs['dead']} moved from DLQ to pending queue" in client.get("/dlq").get_data(as_text=True)
    back = client.post(f"/api/dlq/{jobs['dead']}/retry", data={"csrf_token": token, "next": f"/jobs/{jobs['dead']}"},
                       headers={"Origin": ORIGIN, "Accept": "text/html"})
    assert back.status_code == 303 and back.headers["Location"].endswith(f"/jobs/{jobs['dead']}")
    assert "not in the DLQ" in client.get(f"/jobs/{jobs['dead']}").get_data(as_text=True)
    evil = client.post(f"/api/dlq/{jobs['xss']}/retry", data={"csrf_token": token, "next": "//evil.example/x"},
                       headers={"Origin": ORIGIN, "Accept": "text/html"})
    assert evil.headers["Location"].endswith("/dlq")


# -- CSRF, token, read-only ------------------------------------------------------------------
def test_csrf_is_checked_on_every_post(client, jobs, manager):
    path = f"/api/dlq/{jobs['dead']}/retry"
    assert post(client, path, None).status_code == 403  # no session, no token
    token = csrf_of(client)
    refused = {
        "no token": post(client, path, None),
        "wrong token": post(client, path, "x" * 43),
        "form field wrong": post(client, path, None, data={"csrf_token": "nope"}),
        "cross-origin": post(client, path, token, origin="http://evil.example"),
        "null origin": post(client, path, token, origin="null"),
        "no origin or referer": post(client, path, token, origin=None),
        "cross-site referer": post(client, path, token, origin=None,
                                   headers={"Referer": "http://evil.example/dlq"}),
    }
    for what, got in refused.items():
        assert got.status_code == 403, what
        assert "error" in got.get_json(), what
    assert state_of(manager, jobs["dead"]) == "dead"
    ok = post(client, path, None, origin=None, data={"csrf_token": token}, headers={"Referer": f"{ORIGIN}/dlq"})
    assert ok.status_code == 200 and state_of(manager, jobs["dead"]) == "pending"


def test_a_session_from_another_client_does_not_carry_its_token(manager, jobs):
    first, second = client_for(manager), client_for(manager)
    token = csrf_of(first)
    csrf_of(second)
    assert post(second, f"/api/dlq/{jobs['dead']}/retry", token).status_code == 403
    assert state_of(manager, jobs["dead"]) == "dead"


def test_token_rules(manager, jobs):
    client = client_for(manager, token="s3cret")
    path = f"/api/dlq/{jobs['dead']}/retry"
    assert client.get("/api/status").status_code == 200  # reading needs no token
    page = client.get("/dlq").get_data(as_text=True)
    assert "Retry all" not in page and "need the token" in page
    token = csrf_of(client)
    needs = post(client, path, token)
    assert needs.status_code == 401 and needs.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/?token=wrong").status_code == 403
    assert state_of(manager, jobs["dead"]) == "dead"
    bearer = client_for(manager, token="s3cret").post(path, headers={"Authorization": "Bearer s3cret"})
    assert bearer.status_code == 200 and state_of(manager, jobs["dead"]) == "pending"
    login = client.get("/dlq?token=s3cret&offset=0")
    assert login.status_code == 303 and login.headers["Location"].endswith("/dlq?offset=0")
    assert "Retry all" in client.get("/dlq").get_data(as_text=True)
    token = csrf_of(client)  # a new session: a new CSRF token
    assert post(client, f"/api/dlq/{jobs['xss']}/retry", token).status_code == 200
    other = client_for(manager, token="s3cret")
    assert post(other, "/api/dlq/purge", csrf_of(other)).status_code == 401


def test_read_only_refuses_every_change(manager, jobs):
    client = client_for(manager, read_only=True)
    page = client.get("/dlq").get_data(as_text=True)
    assert "Read-only" in page and "<form" not in page
    token = csrf_of(client)
    for path in (f"/api/dlq/{jobs['dead']}/retry", "/api/dlq/retry-all", f"/api/dlq/{jobs['dead']}/purge",
                 "/api/dlq/purge"):
        got = post(client, path, token)
        assert got.status_code == 403 and "read-only" in got.get_json()["error"], path
    with_token = client_for(manager, token="t", read_only=True)
    assert with_token.post("/api/dlq/purge", headers={"Authorization": "Bearer t"}).status_code == 403
    assert manager.counts()[JobState.DEAD] == 2


def test_loopback_only_refuses_other_host_names(manager):
    client = client_for(manager, loopback_only=True)
    assert client.get("/api/status").status_code == 200
    assert client.get("/api/status", headers={"Host": "127.0.0.1:8080"}).status_code == 200
    assert client.get("/api/status", headers={"Host": "[::1]:8080"}).status_code == 200
    assert client.get("/api/status", headers={"Host": "127.0.0.2:8080"}).status_code == 200  # started on it
    rebound = client.get("/api/status", headers={"Host": "evil.example:8080"})
    assert rebound.status_code == 400 and "Host" in rebound.get_json()["error"]
    for other in ("10.0.0.1:8080", "127.0.0.1.evil.example", "[::2]:8080"):
        assert client.get("/api/status", headers={"Host": other}).status_code == 400, other


def test_is_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com"))


# -- pages: escaping, paging, headers ------------------------------------------------------
def test_job_text_is_escaped_everywhere(client, jobs):
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path in ("/jobs", "/jobs?state=dead", "/dlq", f"/jobs/{jobs['xss']}", f"/jobs/{jobs['xss']}?attempt=1"):
        page = client.get(path).get_data(as_text=True)
        assert escaped in page, path
        assert XSS not in page and "<script>alert" not in page, path
    job_page = client.get(f"/jobs/{jobs['xss']}").get_data(as_text=True)
    assert job_page.count(escaped) >= 3  # the command, stdout and stderr
    raw = client.get(f"/api/jobs/{jobs['xss']}").get_data(as_text=True)
    assert client.get(f"/api/jobs/{jobs['xss']}").mimetype == "application/json" and "alert(1)" in raw


def test_error_pages_escape_what_they_echo(client):
    got = client.get("/jobs/%3Cscript%3E")
    assert got.status_code == 400 and "<script>" not in got.get_data(as_text=True)
    assert client.get("/jobs?state=%3Cb%3E").get_data(as_text=True).count("&lt;b&gt;") == 1


def test_pages_render_and_page_through(client, manager):
    manager.enqueue_many([f"echo job-{i:03d}" for i in range(120)])
    for path in ("/", "/jobs", "/dlq", "/workers"):
        assert client.get(path).status_code == 200, path
    first = client.get("/jobs").get_data(as_text=True)
    assert "1–50 of 120" in first and "echo job-119" in first and "echo job-069" not in first
    assert first.index("echo job-119") < first.index("echo job-070")  # newest first
    third = client.get("/jobs?offset=100").get_data(as_text=True)
    assert "101–120 of 120" in third and "echo job-000" in third and "Older" not in third
    assert "Newer" in third
    prefix = client.get(f"/jobs/{manager.list_jobs()[0].id[:8]}")
    assert prefix.status_code == 302


def test_pages_show_chosen_ids_in_full_and_generated_ones_short(client, manager):
    manager.enqueue_many(['{"id":"nightly-build-1","command":"true"}', '{"id":"nightly-build-2","command":"true"}'])
    generated = manager.enqueue("true").id
    page = client.get("/jobs").get_data(as_text=True)
    assert ">nightly-build-1</a>" in page and ">nightly-build-2</a>" in page
    assert f">{generated[:8]}</a>" in page
    assert "<title>Job nightly-build-1" in client.get("/jobs/nightly-build-1").get_data(as_text=True)


def test_pages_never_read_every_job(client, manager, monkeypatch):
    """Lists come from `manager.page`, which reads only the page's files: fast with 100,000 jobs."""
    manager.enqueue_many([f"echo {i}" for i in range(2000)])

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the dashboard read every job")

    monkeypatch.setattr(manager.storage, "jobs", forbidden)
    monkeypatch.setattr(manager, "list_jobs", forbidden)
    for path in ("/", "/jobs", "/jobs?offset=1500", "/jobs?state=pending&offset=1950", "/dlq", "/workers",
                 "/api/jobs?offset=1000&limit=100", "/api/dlq", "/api/status", "/api/metrics/series"):
        assert client.get(path).status_code == 200, path
    assert "1951–2000 of 2000" in client.get("/jobs?state=pending&offset=1950").get_data(as_text=True)


def test_security_headers_everywhere(client, jobs):
    for path in ("/", "/jobs", "/api/status", "/api/jobs/nosuchjob", "/static/dashboard.js", "/nowhere"):
        got = client.get(path)
        csp = got.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert got.headers["X-Content-Type-Options"] == "nosniff", path
        assert got.headers["X-Frame-Options"] == "DENY", path
    cookie = client_for(client.application.extensions["queuectl"].manager).get("/").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = client.get("/").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # no inline script
    assert "http://" not in page.replace(ORIGIN, "") and "https://" not in page  # nothing from elsewhere


def test_static_files_ship_in_the_package():
    import queuectl.dashboard as package
    folder = os.path.join(os.path.dirname(package.__file__), "static")
    names = set(os.listdir(folder))
    assert {"dashboard.js", "dashboard.css", "charts.js", "job.js", "workers.js"} <= names
    for name in names:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            text = f.read()
        assert "innerHTML" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name


# -- the command -------------------------------------------------------------------------------
class FakeServer:
    def __init__(self, app, host, port, **_kw):
        self.app, self.effective_host, self.effective_port = app, host, port or 54321
        self.ran = self.closed = False

    def run(self):
        self.ran = True

    def close(self):
        self.closed = True


@pytest.fixture
def fake_waitress(monkeypatch):
    import waitress
    made = []

    def create_server(app, host, port, **kw):
        made.append(FakeServer(app, host, port, **kw))
        return made[-1]

    monkeypatch.setattr(waitress, "create_server", create_server)
    return made


def dashboard_cli(data_dir, *args, env=None):
    return CliRunner().invoke(cli, ["--storage-path", str(data_dir), "dashboard", *args], env=env or {})


def test_command_defaults_to_loopback(data_dir, fake_waitress):
    result = dashboard_cli(data_dir, "--port", "0")
    assert result.exit_code == 0, result.output
    assert "Dashboard: http://127.0.0.1:54321/" in result.stdout and "Warning" not in result.stderr
    server = fake_waitress[0]
    assert server.ran and server.closed and server.effective_host == "127.0.0.1"
    guard = server.app.extensions["queuectl"].guard
    assert not guard.read_only and guard.loopback_only and guard.token is None


def test_command_elsewhere_without_token_is_read_only_and_warns(data_dir, fake_waitress):
    result = dashboard_cli(data_dir, "--host", "0.0.0.0", "--port", "9000")
    assert result.exit_code == 0 and "Dashboard: http://0.0.0.0:9000/" in result.stdout
    assert "Warning" in result.stderr and "read-only" in result.stderr
    guard = fake_waitress[0].app.extensions["queuectl"].guard
    assert guard.read_only and not guard.loopback_only


def test_command_elsewhere_with_token(data_dir, fake_waitress):
    result = dashboard_cli(data_dir, "--host", "::", "--port", "9000", env={"QUEUECTL_DASHBOARD_TOKEN": "tok-42"})
    assert result.exit_code == 0 and "http://[::]:9000/" in result.stdout and "tok-42" not in result.stdout
    assert "read-only" not in result.stderr
    guard = fake_waitress[0].app.extensions["queuectl"].guard
    assert not guard.read_only and guard.token == "tok-42"


@pytest.mark.parametrize("host", ["bad host", "", "x..y", "-x", "a/b"])
def test_command_refuses_a_host_that_is_no_address_or_name(data_dir, host):
    result = dashboard_cli(data_dir, "--host", host, "--port", "0")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "neither an IP address nor a host name" in result.stderr and not result.stdout


def test_command_on_a_name_that_does_not_resolve_gives_one_line(data_dir):
    result = dashboard_cli(data_dir, "--host", "no-such-host.invalid", "--port", "0")
    assert result.exit_code == 1 and not result.stdout
    assert result.stderr == "Error: cannot listen on no-such-host.invalid:0: no such address\n"


@pytest.mark.parametrize("host,loopback", [("127.1", True), ("0x7f.1", True), ("localhost.", True), ("::1", True),
                                           ("[::1]", True), ("10.1", False), ("db_1", False), ("example.com", False)])
def test_loopback_forms_are_told_apart(host, loopback):
    from queuectl.dashboard.command import check_host, is_loopback
    assert check_host(None, None, host) == host and is_loopback(host) is loopback


def test_command_without_the_extra_says_what_to_install(data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "waitress", None)
    result = dashboard_cli(data_dir)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "pip install -e '.[dashboard]'" in result.stderr
