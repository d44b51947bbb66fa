"""What every benchmark shares: the result row, wrk with Lua load scripts, child processes.

All figures are ratios of two measurements taken side by side in one run on one machine: the
absolute numbers drift on a shared 2-core box, the ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.processes import free_port

BENCH_DIR = Path(__file__).parent


@dataclass
class Row:
    """One line of the results table."""

    what: str
    measured: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def met_text(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def table(rows: list[Row]) -> str:
    """A Markdown table of rows (readable as plain text too)."""
    header = ["what", "measured", "baseline", "ratio", "target", "met?"]
    lines = [header] + [[r.what, r.measured, r.baseline, "—" if r.ratio is None else f"{r.ratio:.3g}",
                         r.target, met_text(r.met)] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# -- wrk -------------------------------------------------------------------------------------

#: Appended to every Lua script: wrk prints one JSON line with the run's outcome.
_DONE = r"""
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds


def scaled_run_main(doc: str | None, run: Callable[[float, float], Coroutine[Any, Any, tuple[list[Row], dict[str, Any]]]],
                    scale_help: str) -> None:
    """The command line of a benchmark run at a volume scale and a time compression: table, then JSON."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--scale", type=float, default=1.0, help=scale_help)
    parser.add_argument("--compress", type=float, default=10.0, help="time compression factor (1 = real time)")
    args = parser.parse_args()
    rows, details = asyncio.run(run(args.scale, args.compress))
    print(table(rows))
    print(json.dumps(details, indent=2))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk_cpu(pid: int, url: str, script: str, **options: Any) -> tuple[WrkResult, float]:
    """:func:`run_wrk`, and the CPU seconds ``pid`` used per 2xx meanwhile (the steadier figure
    on a shared machine: it does not depend on how much of a core the process was given)."""
    before = cpu_seconds(pid)
    result = run_wrk(url, script, **options)
    return result, (cpu_seconds(pid) - before) / max(1, result.ok)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, script: str, *, seconds: float, connections: int = 32, threads: int = 1,
            args: list[str] | None = None) -> WrkResult:
    """Run wrk with a Lua script (``request``/``delay`` functions) and parse its JSON summary."""
    if not wrk_available():
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    lua = BENCH_DIR / f".wrk-{os.getpid()}.lua"
    lua.write_text(script + _DONE)
    try:
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(lua), url, "--", *(args or [])]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    finally:
        lua.unlink(missing_ok=True)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=data["requests"], seconds=data["duration_us"] / 1e6, non2xx=data["non2xx"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000, p99_ms=data["p99_us"] / 1000,
    )


#: A ~300-byte native event per request, unique per thread and request (so each is a new record).
#: Args: run id, pacing delay in ms (0 = as fast as possible), path, records per request (1 = a
#: bare record object, N > 1 = ``{"records": [...]}`` with N events).
NATIVE_EVENT_LUA = r"""
local counter = 0
local run, pause, path, batch = "r", 0, "/v1/records", 1
local pad = string.rep("x", 120)
setup_id = 0
setup = function(thread)
  setup_id = setup_id + 1
  thread:set("tid", setup_id)
end
init = function(args)
  run = args[1] or run
  pause = tonumber(args[2] or "0")
  path = args[3] or path
  batch = tonumber(args[4] or "1")
  -- Paced mode: each connection waits `pause` ms before each request (wrk has no rate option).
  if pause > 0 then
    delay = function() return pause end
  end
end
local function event()
  counter = counter + 1
  return string.format(
    '{"kind":"event","entity":"checkout-service","type":"BENCH","title":"bench %s-%d-%d",' ..
    '"timestamp":%d,"description":"%s","customData":{"run":"%s","seq":%d}}',
    run, tid, counter, 1790000000 + counter, pad, run, counter)
end
request = function()
  local body
  if batch == 1 then
    body = event()
  else
    local items = {}
    for i = 1, batch do items[i] = event() end
    body = '{"records":[' .. table.concat(items, ",") .. ']}'
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
"""


def native_event_size() -> int:
    """Size of one body NATIVE_EVENT_LUA sends (for the report)."""
    body = ('{"kind":"event","entity":"checkout-service","type":"BENCH","title":"bench r0000000-1-100000",'
            '"timestamp":1790100000,"description":"' + "x" * 120 + '","customData":{"run":"r0000000","seq":100000}}')
    return len(body)


# -- child processes -------------------------------------------------------------------------


class Child:
    """A benchmark helper process (python -m bench.servers ...), stopped on exit."""

    def __init__(self, *argv: str, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.argv = [sys.executable, "-m", *argv, "--port", str(self.port)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, ready_path: str = "/", timeout: float = 20) -> Child:
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, cwd=BENCH_DIR.parent)
        end = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.argv} exited with {self.proc.returncode}")
                try:
                    async with http.get(f"{self.url}{ready_path}") as resp:
                        await resp.read()
                        return self
                except aiohttp.ClientError:
                    if time.monotonic() > end:
                        raise RuntimeError(f"{self.argv} not listening within {timeout} s") from None
                    await asyncio.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def stopping(*children: Any) -> Iterator[None]:
    """Stop (or clean up) every child process on the way out, whatever happened."""
    try:
        yield
    finally:
        for child in children:
            (child.stop if hasattr(child, "stop") else child.cleanup)()


def machine() -> dict[str, str]:
    """The machine a run was on, for the report."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "free -h": mem, "python": sys.version.split()[0]}


def profile(pid: int, seconds: float, out: Path, thread: str = "MainThread") -> dict[str, list[tuple[str, float]]]:
    """Sample one thread of a process with py-spy for ``seconds``; its top frames by own and total time.

    Frames are ``function (file:line)``; shares are fractions of that thread's busy samples
    (py-spy leaves out idle samples unless --idle is given). The event loop runs in MainThread.
    """
    subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                    "--format", "raw", "--threads", "--output", str(out), "--nonblocking"],
                   capture_output=True, check=True, timeout=seconds + 60)
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any(f.startswith("thread ") and thread in f for f in frames[:3]):
            continue
        frames = [f for f in frames if " (" in f and not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        samples += count
        leaf = _frame_name(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
        for name in {_frame_name(f) for f in frames}:
            total[name] = total.get(name, 0) + count

    def top(counts: dict[str, int], keep: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        if keep:  # inclusive time: only the frames that say where the work is, not the event loop's
            # (py-spy prints some of the project's own files as a bare file name: keep those too.)
            ranked = [(name, n) for name, n in ranked
                      if name.split(" (", 1)[-1].startswith(keep) or "/" not in name.split(" (", 1)[-1]]
        return [(name, n / max(1, samples)) for name, n in ranked[:15]]

    return {"own": top(own), "total": top(total, ("bridge/", "aiohttp/", "pydantic/", "structlog/", "json/")),
            "samples": [("samples", float(samples))]}


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep the path short.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "python3.11/", str(BENCH_DIR.parent) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"
