"""The printed table: what | 1 worker | 2 workers | 4 workers | other, as in a README."""
from __future__ import annotations

from typing import Any, Callable, Optional

HEADER = ("what", "1 worker", "2 workers", "4 workers", "other")
Row = tuple[str, str, str, str, str]


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if 0 < abs(value) < 1:
            digits = max(digits, 3)  # 0.012 ms, not 0.0
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def by_workers(figures: dict, pick: Callable[[dict], Any], digits: int = 1) -> tuple[str, str, str]:
    cells = []
    for w in ("1", "2", "4"):
        entry = figures.get(w)
        cells.append(num(pick(entry), digits) if entry is not None else "")
    return cells[0], cells[1], cells[2]


def passes_note(entry: dict) -> str:
    """'; median of N passes' when the figure is one (see run.median_of_passes)."""
    passes = entry.get("passes")
    return f"; median of {len(passes)} passes" if isinstance(passes, list) and len(passes) > 1 else ""


def raw_rows(r: dict) -> list[Row]:
    one = r.get("1", {})
    return [("raw limit: `sh -c true` spawns/s", *by_workers(r, lambda e: e["jobs_per_s"]),
             f"{num(one.get('ms_per_spawn'), 2)} ms per spawn{passes_note(one)}")]


def drain_rows(r: dict) -> list[Row]:
    first = next(iter(r.values()), {})
    return [(f"drain {num(first.get('jobs'))} `true` jobs, jobs/s", *by_workers(r, lambda e: e["jobs_per_s"]),
             f"enqueued with {first.get('enqueued_with', '?')}{passes_note(first)}"),
            ("drain / raw limit", *by_workers(r, lambda e: e["ratio_to_raw"], 2),
             "raw limit at the same concurrency, measured right before each drain")]


def minimum_rows(r: dict) -> list[Row]:
    first = next(iter(r.values()), {})
    return [("durable minimum (bench/qbench/minimum.py), jobs/s", *by_workers(r, lambda e: e["jobs_per_s"]),
             f"file claim, notes, result, batched syncfs; nothing else{passes_note(first)}"),
            ("durable minimum / raw limit", *by_workers(r, lambda e: e["ratio_to_raw"], 2),
             "the ceiling of this design, one job after another (see minimum.py)")]


def enqueue_rows(r: dict) -> list[Row]:
    return [("`queuectl enqueue true`, median ms", "", "", "",
             f"{num(r['cli_ms']['median_ms'])} ms; floor `python -c 'import click'` "
             f"{num(r['floor_ms']['median_ms'])} ms; ratio {num(r['ratio_to_floor'], 2)}")]


def bulk_rows(r: dict) -> list[Row]:
    if not r.get("available"):
        return [("bulk enqueue, jobs/s", "", "", "", f"not run: {r.get('reason')}")]
    floor = ""
    if r.get("floor_files_per_s"):
        floor = (f"; file floor right after {num(r['floor_files_per_s'])} files/s (create, write, close;"
                 f" one syncfs), ratio {num(r.get('ratio_to_floor'), 2)}")
    return [("bulk enqueue (`enqueue --file`), jobs/s", "", "", "",
             f"{num(r['jobs_per_s'])} ({num(r['jobs'])} jobs in {num(r['seconds'], 2)} s, CLI start included{floor})")]


def pickup_rows(r: dict) -> list[Row]:
    return [("pickup latency, ms (idle worker)", f"p50 {num(r['p50_ms'])} / p95 {num(r['p95_ms'])}", "", "",
             f"{r['samples']} jobs; poll_interval {r['poll_interval_s']} s")]


def scale_rows(r: dict) -> list[Row]:
    e, b, q = r["empty"], r["big"], r["ratio_big_to_empty"]
    n = num(r["completed_jobs"])

    def ms_row(label: str, key: str) -> Row:
        return (f"{label}, ms", "", "", "",
                f"empty {num(e[key]['median_ms'])}; {n} jobs {num(b[key]['median_ms'])} (x{num(q[key], 2)})")
    return [ms_row("scale: status (in-process)", "status_internal"),
            ms_row("scale: `queuectl status`", "status_cli"),
            ms_row("scale: `queuectl enqueue true`", "enqueue_cli"),
            ("scale: claim rate, jobs/s", num(b["claim"]["jobs_per_s"]), "", "",
             f"with {n} jobs; empty {num(e['claim']['jobs_per_s'])} (x{num(q['claim_jobs_per_s'], 2)}); "
             f"medians of {_passes(b['claim'])} and {_passes(e['claim'])}; "
             f"start to 1st job {num(b['claim']['startup_s'], 2)} s (empty {num(e['claim']['startup_s'], 2)} s)")]


def _passes(claim: dict) -> str:
    return " / ".join(num(r) for r in claim.get("passes_jobs_per_s", [claim["jobs_per_s"]]))


def recovery_rows(r: dict) -> list[Row]:
    return [("recovery: SIGKILL to attempt 2, s", num(r["seconds"], 2), "", "",
             f"median of {r['runs']}: {', '.join(num(s, 2) for s in r['all_seconds'])}")]


def memory_rows(r: dict) -> list[Row]:
    e = r["empty"]
    other = f"empty store: sum of VmHWM {num(e['sum_hwm_mb'])} MB"
    if "big" in r:
        b = r["big"]
        other += f"; big store: peak RSS {num(b['peak_rss_mb'])} MB, VmHWM {num(b['sum_hwm_mb'])} MB"
    return [(f"memory: `start --count 4` idle {r['idle_s']} s, peak RSS MB", "", "",
             num(e["peak_rss_mb"]), other)]


def peer_rows(r: dict) -> list[Row]:
    rows = [(f"peer {name}: drain {num(r['jobs'])}, jobs/s", *by_workers(figures, lambda v: v), "")
            for name, figures in r["ran"].items()]
    return rows + [(f"peer {name}", "", "", "", f"not run: {why}") for name, why in r["not_run"].items()]


def on_redis(rows: list[Row]) -> list[Row]:
    return [(f"Redis: {row[0]}", *row[1:]) for row in rows]


def redis_drain_rows(r: dict, server: str, _json: Optional[dict]) -> list[Row]:
    rows = on_redis(drain_rows(r))
    first = rows[0]
    return [(*first[:4], f"redis-server {server}, persistence off; {first[4]}"), *rows[1:]]


def redis_enqueue_rows(r: dict, _server: str, json_figures: Optional[dict]) -> list[Row]:
    ms = r["cli_ms"]["median_ms"]
    other = f"{num(ms)} ms"
    if json_figures:
        json_ms = json_figures["cli_ms"]["median_ms"]
        other += f"; JSON store {num(json_ms)} ms; ratio {num(ms / json_ms if json_ms else None, 2)}"
    return [("Redis: `queuectl enqueue true`, median ms", "", "", "", other)]


def redis_bulk_rows(r: dict, _server: str, _json: Optional[dict]) -> list[Row]:
    return on_redis(bulk_rows(r))


def redis_pickup_rows(r: dict, _server: str, _json: Optional[dict]) -> list[Row]:
    rows = on_redis(pickup_rows(r))
    return [(*row[:4], f"{r['samples']} jobs; idle workers block on a Redis wake-up list") for row in rows]


def redis_rows(r: dict) -> list[Row]:
    """Only the reason when Redis could not run; its figures sit beside the JSON ones."""
    if r.get("available") is False:
        return [("Redis backend", "", "", "", f"not run: {r.get('reason')}")]
    return []


ROWS: dict[str, Callable[[dict], list[Row]]] = {
    "raw": raw_rows, "drain": drain_rows, "minimum": minimum_rows, "enqueue": enqueue_rows, "bulk": bulk_rows,
    "pickup": pickup_rows, "redis": redis_rows, "scale": scale_rows, "recovery": recovery_rows,
    "memory": memory_rows, "peers": peer_rows,
}

# The Redis figures of a measurement, printed right below its JSON rows:
# (Redis figures, redis-server version, the JSON figures when measured too) -> rows.
REDIS_ROWS: dict[str, Callable[[dict, str, Optional[dict]], list[Row]]] = {
    "drain": redis_drain_rows, "enqueue": redis_enqueue_rows, "bulk": redis_bulk_rows,
    "pickup": redis_pickup_rows,
}


def table(results: dict, errors: Optional[dict] = None) -> str:
    rows: list[Row] = []
    redis = results.get("redis") or {}
    for name, make in ROWS.items():
        if name in results:
            rows += make(results[name])
        if name in REDIS_ROWS and name in redis:
            rows += REDIS_ROWS[name](redis[name], redis.get("server", "?"), results.get(name))
    for name, error in (errors or {}).items():
        rows.append((name, "", "", "", f"FAILED: {error.strip().splitlines()[-1][:100]}"))
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *(line(r) for r in rows)])
