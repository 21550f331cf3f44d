#!/usr/bin/env python3
"""How fast a function replica is ready: process start -> ``ROOST_READY`` line, and
process start -> first 200 on ``/healthz``, over N starts each (p50/p90/p99/max).

    python3 faas-runtime/bench_start.py                  # the default matrix, 30 starts each
    python3 faas-runtime/bench_start.py --runs 50 --python /usr/bin/python3.11 --flags=-S

Per start, two ways a supervisor can learn that the replica is ready:
  line: read stdout until ``ROOST_READY <port>``, then one GET /healthz (the 200 time);
  poll: ignore stdout and GET /healthz every ``--poll-ms`` from the start until a 200
        (the orchestrator probes this way, every 10 ms by default).
Also measured: SIGTERM -> exit of an idle replica, and a spare (``roost_runtime spare``,
as the process runtime's pool keeps them: interpreter, asyncio, runtime and Starlette
imported ahead) told its function: the assignment line -> ``ROOST_READY``. Standard
library only. The runtime needs Starlette: measure an interpreter that has it (Debian's
/usr/bin/python3 with python3-starlette); the folders its ``site`` adds go on PYTHONPATH,
as the process runtime does, so that ``-S`` finds them too.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(HEALTHZ)
            data = b""
            while len(data) < 12:
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def site_dirs(python):
    """The folders ``site`` adds to ``python``'s path (its site- or dist-packages)."""
    def path(*flags):
        out = subprocess.run([python, *flags, "-c", "import sys, json; print(json.dumps(sys.path))"],
                             capture_output=True, text=True, check=True, env={"PATH": os.environ.get("PATH", "")})
        return json.loads(out.stdout)
    without = path("-S")
    return [p for p in path() if p and p not in without]


class Case:
    def __init__(self, label, python, flags, kind, folder, env, pythonpath, spare=False):
        self.label, self.python, self.flags, self.kind = label, python, flags, kind
        self.folder, self.env, self.pythonpath, self.spare = folder, env, pythonpath, spare
        self.site = site_dirs(python)  # asked once: not inside the timed starts

    def function_env(self):
        return {"ROOST_FUNCTION_NAME": "bench", "ROOST_FUNCTION_DIR": self.folder, **self.env}

    def popen(self, port, stdout, spare=False):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "PYTHON"))}
        env.update(PYTHONPATH=os.pathsep.join([self.pythonpath, *self.site]),
                   PYTHONDONTWRITEBYTECODE="1", PORT=str(port), ROOST_BIND="127.0.0.1")
        if not spare:
            env.update(self.function_env())
        return subprocess.Popen([self.python, *self.flags, "-m", "roost_runtime", "spare" if spare else self.kind],
                                env=env, cwd=self.folder, stdin=subprocess.PIPE if spare else subprocess.DEVNULL,
                                stdout=stdout, stderr=subprocess.DEVNULL)


def stop(proc):
    # Popen.wait(timeout) polls with growing sleeps (about 15 ms in all before it sees an
    # exit that takes a few ms): wait in waitpid instead, with a watchdog timer.
    watchdog = threading.Timer(10, proc.kill)
    watchdog.start()
    t = time.perf_counter()
    proc.terminate()
    code = proc.wait()
    watchdog.cancel()
    if code != 0:
        raise SystemExit(f"the replica exited with {code} after SIGTERM")
    return time.perf_counter() - t


def start_by_line(case):
    port = free_port()
    t0 = time.perf_counter()
    proc = case.popen(port, subprocess.PIPE)
    line = proc.stdout.readline()
    t_line = time.perf_counter()
    if line.split() != [b"ROOST_READY", str(port).encode()]:
        proc.kill()
        raise SystemExit(f"{case.label}: expected the readiness line, got {line!r}")
    if not healthz_ok(port):
        proc.kill()
        raise SystemExit(f"{case.label}: /healthz did not answer 200 after the readiness line")
    t_200 = time.perf_counter()
    t_stop = stop(proc)
    proc.stdout.close()
    return t_line - t0, t_200 - t0, t_stop


def start_spare(case, settle_s):
    """A spare started and left ``settle_s`` to import, then told its function: the time
    from the assignment line to the ``ROOST_READY`` line, and to the first 200."""
    port = free_port()
    proc = case.popen(port, subprocess.PIPE, spare=True)
    time.sleep(settle_s)  # a pool's spare has long finished its imports
    line = json.dumps({"kind": case.kind, "env": case.function_env()}).encode() + b"\n"
    t0 = time.perf_counter()
    proc.stdin.write(line)
    proc.stdin.flush()
    ready = proc.stdout.readline()
    t_line = time.perf_counter()
    if ready.split() != [b"ROOST_READY", str(port).encode()]:
        proc.kill()
        raise SystemExit(f"{case.label}, spare: expected the readiness line, got {ready!r}")
    if not healthz_ok(port):
        proc.kill()
        raise SystemExit(f"{case.label}, spare: /healthz did not answer 200 after the readiness line")
    t_200 = time.perf_counter()
    stop(proc)
    proc.stdin.close()
    proc.stdout.close()
    return t_line - t0, t_200 - t0


def start_by_polling(case, poll_s):
    port = free_port()
    t0 = time.perf_counter()
    proc = case.popen(port, subprocess.DEVNULL)
    deadline = t0 + 10
    while not healthz_ok(port):
        if proc.poll() is not None or time.perf_counter() > deadline:
            proc.kill()
            raise SystemExit(f"{case.label}: the replica never answered /healthz")
        time.sleep(poll_s)
    t_200 = time.perf_counter() - t0
    stop(proc)
    return t_200


def baseline(python, flags, code):
    """Process start -> a line printed by ``python flags -c code`` (the floor)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, *flags, "-c", code + "; print('up', flush=True)"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    proc.stdout.readline()
    t = time.perf_counter() - t0
    proc.wait()
    proc.stdout.close()
    return t


def pct(values, p):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-p * len(s) // 100) - 1))]  # nearest rank


def row(label, metric, values):
    ms = [v * 1000 for v in values]
    return (f"| {label} | {metric} | {pct(ms, 50):.1f} | {pct(ms, 90):.1f} | {pct(ms, 99):.1f} "
            f"| {min(ms):.1f} | {max(ms):.1f} |")


def copy_without_bytecode(tmp):
    """The runtime package copied where no __pycache__ exists (a fresh checkout run with
    PYTHONDONTWRITEBYTECODE=1 compiles it at every start)."""
    dest = os.path.join(tmp, "roost_runtime")
    shutil.copytree(os.path.join(HERE, "roost_runtime"), dest, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="starts per case and method (30)")
    ap.add_argument("--poll-ms", type=float, default=1.0, help="probe interval of the poll method (1 ms)")
    ap.add_argument("--python", action="append", help="interpreter(s) to measure (default: this one, resolved)")
    ap.add_argument("--flags", action="append", default=None,
                    help="interpreter flags, one case each; '' for none (default: '' and -S)")
    ap.add_argument("--no-command", action="store_true", help="skip the command kind (wc)")
    ap.add_argument("--no-bytecode-case", action="store_true", help="skip the case without cached bytecode")
    ap.add_argument("--no-spare", action="store_true", help="skip the spares (python cases)")
    ap.add_argument("--spare-settle-ms", type=float, default=500,
                    help="how long a spare may import before it is told its function (500 ms)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the floor: the bare interpreter, and the interpreter importing asyncio")
    args = ap.parse_args()

    pythons = args.python or [os.path.realpath(sys.executable)]
    flag_sets = [f.split() for f in (args.flags if args.flags is not None else ["", "-S"])]
    hello = os.path.join(HERE, "python", "functions", "hello")
    wc = os.path.join(HERE, "command", "functions", "wc")
    py_env = {"ROOST_FUNCTION_FILE": "hello.py"}
    def name(python, flags=()):
        shown = python if len(pythons) > 1 else os.path.basename(python)
        return f"`{' '.join([shown, *flags])}`"

    cases = []
    for python in pythons:
        for flags in flag_sets:
            cases.append(Case(f"python hello, {name(python, flags)}", python, flags, "python", hello, py_env, HERE,
                              spare=not args.no_spare))
    if not args.no_command:
        cases.append(Case(f"command wc, {name(pythons[0], flag_sets[0])}", pythons[0], flag_sets[0], "command",
                          wc, {"ROOST_COMMAND": '["sh", "wc.sh"]'}, HERE))
    tmp = tempfile.mkdtemp(prefix="roost-bench-")
    try:
        if not args.no_bytecode_case:
            cases.append(Case(f"python hello, {name(pythons[0], flag_sets[0])}, runtime not compiled",
                              pythons[0], flag_sets[0], "python", hello, py_env, copy_without_bytecode(tmp)))
        # Make sure the measured package has its bytecode cached, as after a first run.
        subprocess.run([pythons[0], "-m", "compileall", "-q", os.path.join(HERE, "roost_runtime")], check=True)

        print(f"python {sys.version.split()[0]} ({os.path.realpath(sys.executable)}), "
              f"{os.cpu_count()} CPUs, {args.runs} starts per case and method, poll every {args.poll_ms:g} ms\n")
        print("| case | from process start to | p50 ms | p90 ms | p99 ms | min ms | max ms |")
        print("|---|---|---:|---:|---:|---:|---:|")
        if not args.no_baseline:
            for python in pythons:
                for flags in flag_sets:
                    for what, code in (("bare interpreter", "pass"), ("interpreter + `import asyncio`", "import asyncio")):
                        baseline(python, flags, code)
                        times = [baseline(python, flags, code) for _ in range(args.runs)]
                        print(row(f"floor: {what}, {name(python, flags)}", "a line on stdout", times))
        for case in cases:
            start_by_line(case)  # warm the page cache
            line, first_200, stops = zip(*(start_by_line(case) for _ in range(args.runs)))
            polled = [start_by_polling(case, args.poll_ms / 1000) for _ in range(args.runs)]
            print(row(case.label, "`ROOST_READY` line", line))
            print(row(case.label, "first 200 on /healthz after the line", first_200))
            print(row(case.label, f"first 200 on /healthz, polling every {args.poll_ms:g} ms", polled))
            print(row(case.label, "SIGTERM (idle) to exit", stops))
            if case.spare:
                line, first_200 = zip(*(start_spare(case, args.spare_settle_ms / 1000) for _ in range(args.runs)))
                print(row(case.label, "spare: assignment to `ROOST_READY` line", line))
                print(row(case.label, "spare: assignment to first 200 on /healthz", first_200))
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
