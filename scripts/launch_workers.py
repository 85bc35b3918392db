"""Start N local ``kd-keras`` workers with ``TF_CONFIG`` on loopback ports (one process per worker).

Two jobs:

- ``run``: every worker runs the same study under ``MultiWorkerMirroredStrategy`` (``--strategy multiworker`` is
  added when the command does not name a strategy). Worker 0 (the chief) writes to ``--out``; worker ``i``
  writes its own copy to ``<out>.worker<i>`` (checkpoints must not collide; its results are the chief's) and
  its output to ``<out>.worker<i>.log``. The workers share the teacher's pool labelling and the evaluations
  batch by batch (each runs the model on its 1/N of every batch: ``kd_keras.engine.distribute.predict_on_batch``).
- ``cache build``: worker ``i`` computes part ``i/N`` of the teacher cache (``--shard i/N``), then one
  ``kd-keras cache merge`` with the same options checks the parts and writes the manifest.

On several machines, run one worker per machine yourself with the same ``TF_CONFIG`` cluster and its own task
index (``--print`` shows the command and environment of each worker), e.g. on host B of two:
``TF_CONFIG='{"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, "task": {"type": "worker", "index": 1}}'
kd-keras run oct --strategy multiworker ...``. See ``docs/scale.md``.

Example::

    python scripts/launch_workers.py --workers 2 -- run oct --preset smoke --out runs/two_workers
    python scripts/launch_workers.py --workers 4 -- cache build --teacher t.keras --pool pool/ \\
        --image-size 224 --out cache/

Exit status: 0 when every worker (and the merge) succeeded; else the first failing worker's status (2 for a
problem the user can fix, with its one line); 124 when the workers did not finish within ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["free_ports", "main", "worker_commands"]

# Options of `kd-keras cache build` that `kd-keras cache merge` does not take (option -> takes a value).
_BUILD_ONLY = {"--batch-size": True, "--shard-size": True, "--on-bad-file": True, "--workers": True,
               "--shard": True}


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` now (held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _replace_option(args: Sequence[str], name: str, value: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == name and i + 1 < len(args):
            out += [name, value]
            skip = True
        elif arg.startswith(name + "="):
            out.append(f"{name}={value}")
        else:
            out.append(arg)
    return out


def _drop_option(args: Sequence[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def worker_commands(command: Sequence[str], workers: int, ports: Sequence[int],
                    host: str = "127.0.0.1") -> list[tuple[list[str], dict[str, str]]]:
    """Each worker's ``kd-keras`` arguments and extra environment (``TF_CONFIG``) for ``command``.

    Args:
        command: a ``kd-keras`` command line: ``run <study> ...`` or ``cache build ...``.
        workers: number of workers.
        ports: one port per worker.
        host: the workers' address.

    Raises:
        ValueError: another command, or ``run`` without ``--out``.

    Example:
        >>> worker_commands(["run", "oct", "--out", "r"], 2, [5000, 5001])[1][0]
        ['run', 'oct', '--out', 'r.worker1', '--strategy', 'multiworker']
    """
    command = list(command)
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    jobs = []
    for index in range(workers):
        env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        if command[:1] == ["run"]:
            out = _option(command, "--out")
            if out is None:
                raise ValueError("launch_workers: give the run an --out folder (worker i writes to <out>.worker<i>)")
            args = command if index == 0 else _replace_option(command, "--out", f"{out}.worker{index}")
            if _option(args, "--strategy") is None and not any("strategy=" in a for a in args):
                args = [*args, "--strategy", "multiworker"]
        elif command[:2] == ["cache", "build"]:
            args = [*_drop_option(command, "--shard"), "--shard", f"{index}/{workers}"]
            env = {}  # independent parts: no cluster needed
        else:
            raise ValueError("launch_workers: the command must be `run <study> ...` or `cache build ...`")
        jobs.append((args, env))
    return jobs


def _merge_command(command: Sequence[str]) -> list[str]:
    args, skip = ["cache", "merge"], False
    for arg in command[2:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _BUILD_ONLY:
            skip = _BUILD_ONLY[name] and "=" not in arg
            continue
        args.append(arg)
    return args


def _kd_keras() -> list[str]:
    return [sys.executable, "-m", "kd_keras"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: launch_workers.py --workers N [--timeout S] [--print] -- run <study> ... | cache build ...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch_workers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="number of local workers (default 2)")
    parser.add_argument("--timeout", type=float, default=0, help="seconds before the workers are stopped (0: none)")
    parser.add_argument("--print", action="store_true", help="print each worker's environment and command, run none")
    options = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if options.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        jobs = worker_commands(command, options.workers, free_ports(options.workers))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if options.print:
        for args, env in jobs:
            prefix = " ".join(f"{k}='{v}'" for k, v in env.items())
            print(f"{prefix} kd-keras {' '.join(args)}".strip())
        return 0
    started = time.monotonic()
    processes = []
    for index, (args, env) in enumerate(jobs):
        # Worker 0 speaks on this terminal; the others' output goes beside the run's --out.
        log = Path(f"{(_option(command, '--out') or 'kd_keras').rstrip('/')}.worker{index}.log") if index else None
        stdout = open(log, "w") if log else None  # noqa: SIM115 - closed below
        processes.append((subprocess.Popen([*_kd_keras(), *args], env={**os.environ, **env}, stdout=stdout,
                                           stderr=subprocess.STDOUT if log else None), stdout, log))
        print(f"worker {index}: kd-keras {' '.join(args)}" + (f" (output: {log})" if log else ""), file=sys.stderr)
    status = 0
    try:
        for process, _, log in processes:
            left = None if not options.timeout else max(1.0, options.timeout - (time.monotonic() - started))
            code = process.wait(timeout=left)
            if code and not status:
                status = code
                if log is not None:
                    print(f"a worker failed ({log}):\n" + log.read_text()[-2000:], file=sys.stderr)
    except subprocess.TimeoutExpired:
        print(f"error: the workers did not finish within {options.timeout:.0f} s; stopped", file=sys.stderr)
        status = 124
    finally:
        for process, stdout, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            if stdout is not None:
                stdout.close()
    if status == 0 and command[:2] == ["cache", "build"]:
        merge = _merge_command(command)
        print(f"merge: kd-keras {' '.join(merge)}", file=sys.stderr)
        status = subprocess.call([*_kd_keras(), *merge])
    return status


if __name__ == "__main__":
    sys.exit(main())
