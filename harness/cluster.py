"""Sweeps over a Dask cluster: a point is a task that needs the resource
`machine=1`, so that two points never share a machine, and the client
merges the points into one results file as they arrive.

A task runs its point as the command line itself (`iommu-stress sweep`
with one design and one thread count), in a child process of the Dask
worker: the point's workers must be forked from a process with no other
threads (a Dask worker has several), and a point that crashes takes only
its child with it.  The child dies with the worker (PR_SET_PDEATHSIG,
SIGTERM: it unlinks its shared memory as on any stop), and the scheduler
runs a task whose machine was lost again elsewhere; a point is merged
once, when its task ends, so nothing merged is ever measured twice or
lost.

Two modes: spread (each point once, on any free machine; the machines
must share a fingerprint, or the figures of one table would not compare)
and each machine (every point on every machine, kept apart by machine).
`distributed` is an optional extra: it is imported only when a sweep asks
for a cluster.
"""
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from harness.errors import UsageError

RESOURCE = "machine"
EXTRA = ("--cluster needs the optional extra 'cluster': pip install -e '.[cluster]' "
         "(Dask distributed)")
CONNECT_TIMEOUT = 10.0      # seconds to reach the scheduler, and for a first machine to join
STOP_LOOK_S = 0.5           # a task looks this often whether the sweep was stopped
WAIT_S = 1.0                # the client looks at the cluster this often while it waits
RETURN_S = 60.0             # each machine: how long a lost machine's points wait for it
MACHINE_ENV = "IOMMU_STRESS_MACHINE"
STOPPED = (129, 130, 143)   # a point's command stopped by a signal (harness/signals.py)
AGAIN = 3                   # times a point stopped so is measured again
PR_SET_PDEATHSIG = 1

# what a machine is: two machines of one fingerprint give comparable
# figures.  Memory is compared in GiB (firmware reserves differ by a few
# MiB between machines of one kind); the commit names the code measured
FINGERPRINT = ("cpu_model", "cores_allowed", "memory_bytes", "kernel", "arch", "python",
               "numba", "numpy", "project", "commit")

_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def distributed():
    """The distributed package, or the one line that names the extra."""
    try:
        import distributed as dist
    except ImportError:
        raise UsageError(EXTRA) from None
    return dist


def address(text):
    """A scheduler address as tcp://HOST:PORT (tcp:// may be left out)."""
    t = text.strip()
    if "://" not in t:
        t = "tcp://" + t
    m = _ADDRESS.fullmatch(t)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UsageError("--cluster %s: expected a scheduler address tcp://HOST:PORT" % text)
    return t


# ------------------------------------------------------------ on a worker

def fingerprint():
    """This machine as FINGERPRINT says.  IOMMU_STRESS_MACHINE (a JSON
    object) overrides keys: a machine that misreports itself, or a test
    that needs two kinds of machine on one."""
    from importlib import metadata

    from harness import results
    m = results.machine()
    try:
        project = metadata.version("iommu-stress")
    except metadata.PackageNotFoundError:
        project = "unknown"
    fp = {k: m.get(k) for k in FINGERPRINT if k != "project"}
    fp["project"] = project
    forced = os.environ.get(MACHINE_ENV)
    if forced:
        try:
            fp.update({k: v for k, v in json.loads(forced).items() if k in FINGERPRINT})
        except (ValueError, AttributeError):
            raise UsageError("%s: expected a JSON object of %s"
                             % (MACHINE_ENV, ", ".join(FINGERPRINT))) from None
    return fp


def whoami(dask_worker=None):
    """This worker: its fingerprint, hostname, address and name (Client.run
    hands the worker in; a task finds its own)."""
    import distributed as dist
    w = dask_worker or dist.get_worker()
    return dict(fingerprint(), hostname=socket.gethostname(), worker=w.address,
                worker_name=str(w.name))


def _die_with_parent():
    # the Dask worker's death (SIGKILL, a lost machine) stops the point as a
    # signal does: its workers stopped, its segment unlinked
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def measure(argv, stop_name):
    """In a Dask worker: `iommu-stress sweep ARGV` in a child process, which
    is stopped (SIGTERM) once the sweep's stop event is set or the task is
    no longer wanted.  Returns the point(s), the child's exit status and
    its error lines, and this machine."""
    import distributed as dist
    w = dist.get_worker()
    key = w.get_current_task()
    stop = dist.Event(stop_name)
    # in the Dask worker's own directory: a worker killed mid-point leaves
    # this one behind, and Dask purges a dead worker's directory
    with tempfile.TemporaryDirectory(prefix="iommu-stress-cluster-", dir=w.local_directory) as d:
        out = os.path.join(d, "point.json")
        p = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", *argv, "--json", out],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        stopped = False
        while True:
            try:
                _, err = p.communicate(timeout=STOP_LOOK_S)
                break
            except subprocess.TimeoutExpired:
                if not stopped and (stop.is_set() or _unwanted(w, key)):
                    p.send_signal(signal.SIGTERM)
                    stopped = True
        doc = {}
        if os.path.exists(out):
            with open(out) as f:
                doc = json.load(f)
    return {"rc": p.returncode, "stopped": stopped, "points": doc.get("points", []),
            "failures": doc.get("failures", []), "cycles_per_ns":
            (doc.get("machine") or {}).get("cycles_per_ns"),
            "errors": [l for l in err.splitlines() if "error" in l or "failed" in l][-3:]
            or err.strip().splitlines()[-1:], "host": whoami()}


def _unwanted(worker, key):
    """Whether the scheduler dropped this task (its client cancelled it or
    went away): the worker's record of it is gone or cancelled."""
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


# ---------------------------------------------------------- on the client

def same_kind(a, b):
    """The keys in which two fingerprints differ ([] when they are one kind)."""
    out = []
    for k in FINGERPRINT:
        x, y = a.get(k), b.get(k)
        if k == "memory_bytes" and isinstance(x, int) and isinstance(y, int):
            x, y = round(x / 2**30), round(y / 2**30)
        if x != y:
            out.append(k)
    return out


class Cluster:
    """The client's side: the scheduler, its machines, and a sweep's tasks."""

    def __init__(self, text):
        self.address = address(text)
        self.dist = distributed()
        # Dask's own log lines (reconnects, a worker lost) are not the
        # command's output: what matters is said here, in one line.  The
        # same for tornado's, Dask's event loop, which logs a traceback
        # when a callback of Dask's fails as Ctrl-C tears the client down
        for name in [n for n in logging.root.manager.loggerDict
                     if n.startswith(("distributed", "tornado"))]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            self.client = self.dist.Client(self.address, timeout=CONNECT_TIMEOUT,
                                           set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise UsageError("--cluster %s: cannot reach the scheduler: %s"
                             % (self.address, _first_line(e))) from None
        self.labels = {}            # worker address -> machine name

    def close(self):
        try:
            self.client.close(timeout=5)
        except Exception:            # noqa: BLE001  (a scheduler already gone)
            pass

    def workers(self):
        """{address: scheduler's info} of the workers that offer a machine."""
        try:
            info = self.client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:            # before 2025, every worker without asking
            info = self.client.scheduler_info()["workers"]
        return {a: w for a, w in info.items() if (w.get("resources") or {}).get(RESOURCE)}

    def machines(self):
        """Waits for a first machine; then every worker's identity, named:
        its worker name when one was given, else its hostname (its address
        when two share a host).  Refuses a worker offering more than one
        machine: two of its points would share it."""
        deadline = time.monotonic() + CONNECT_TIMEOUT
        found = self.workers()
        while not found and time.monotonic() < deadline:
            time.sleep(0.2)
            found = self.workers()
        if not found:
            raise UsageError("--cluster %s: no worker offers the resource %s=1 (start each with "
                             "`dask worker %s --nworkers 1 --nthreads 1 --resources %s=1`)"
                             % (self.address, RESOURCE, self.address, RESOURCE))
        for a, w in found.items():
            if w["resources"][RESOURCE] != 1:
                raise UsageError("--cluster %s: worker %s offers %s=%g: start it with "
                                 "--resources %s=1, or two points would share its machine"
                                 % (self.address, a, RESOURCE, w["resources"][RESOURCE], RESOURCE))
        try:
            ids = self.client.run(whoami, workers=list(found))
        except UsageError:
            raise
        except Exception as e:           # noqa: BLE001  (a worker without the project)
            raise UsageError("--cluster %s: a worker cannot run iommu-stress: %s"
                             % (self.address, _first_line(e))) from None
        self._name(ids)
        return {self.labels[a]: ids[a] for a in sorted(ids, key=lambda a: self.labels[a])}

    def _name(self, ids):
        """Names the workers of `ids` not named yet: a name the worker was
        given, else its hostname, else (a host carrying two workers, or a
        name a live worker holds) its address.  A name once given stays."""
        hostnames = [h["hostname"] for h in ids.values()]
        live = set(self.workers())
        taken = {n for a, n in self.labels.items() if a in live}
        for a, h in ids.items():
            if a in self.labels:
                continue
            name = h["worker_name"]
            if name in ("", "None", a):
                name = h["hostname"] if hostnames.count(h["hostname"]) == 1 else a
            if name in taken:
                name = a
            self.labels[a] = name
            taken.add(name)
        return ids

    def label(self, host):
        """The name of the machine a task ran on (a worker that joined since
        the start is named then)."""
        if host["worker"] not in self.labels:
            self._name({host["worker"]: host})
        return self.labels[host["worker"]]

    def shared_hosts(self, machines):
        """Hostnames that carry more than one machine's worker."""
        seen = {}
        for name, h in machines.items():
            seen.setdefault(h["hostname"], []).append(name)
        return {h: names for h, names in seen.items() if len(names) > 1}

    def sweep(self, tasks, merge, on_error="stop", say=None):
        """Runs `tasks` [(argv, design, threads, machine name or None)] and
        hands each ending to `merge(task, result or None, error or None)`,
        which returns False when the point failed.  A task bound to a
        machine goes to that machine's worker alone.  On the way out (a
        failure under on_error "stop", an error, Ctrl-C) the tasks not yet
        ended are cancelled and their points stopped.  Returns whether every
        point was merged."""
        dist = self.dist
        stop_name = "iommu-stress-stop-" + uuid.uuid4().hex
        stop = dist.Event(stop_name, client=self.client)
        where = {v: k for k, v in self.labels.items()}
        pending = {}                 # future -> (task, its order, the worker it is bound to)
        for n, task in enumerate(tasks):
            addr = where.get(task[3])
            pending[self._submit(task, stop_name, n, addr)] = (task, n, addr)
        tries = [0] * len(tasks)     # points stopped on their machine, measured again
        lost = {}                    # machine name -> since when its worker is gone
        live = set(self.labels)
        ok = True
        try:
            while pending:
                try:
                    with self.client.as_current():
                        dist.wait(list(pending), timeout=WAIT_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    pass
                for fut in sorted((f for f in pending if f.done()), key=lambda f: pending[f][1]):
                    task, n, _ = pending.pop(fut)
                    if fut.status == "cancelled":
                        raise UsageError("--cluster %s: lost the scheduler, and with it the "
                                         "sweep's tasks; the points merged are kept"
                                         % self.address)
                    if fut.status == "error":
                        good = merge(task, None, fut.exception())
                    else:
                        r = fut.result()
                        if r["rc"] in STOPPED and not r["stopped"] and tries[n] < AGAIN:
                            # the machine's own stop (its worker's terminal
                            # closed, Ctrl-C there): not the point's failure
                            tries[n] += 1
                            if say:
                                say("%s at %d threads was stopped on its machine; it is "
                                    "measured again" % (task[1], task[2]))
                            addr = where.get(task[3])
                            pending[self._submit(task, stop_name, n, addr)] = (task, n, addr)
                            continue
                        good = merge(task, r, None)
                    ok = ok and good
                    if not good and on_error == "stop":
                        return False
                try:
                    live = self._changes(live, say, any(t[3] for t, _, _ in pending.values()))
                    rehomed = (not any(addr for _, _, addr in pending.values())
                               or self._rehome(pending, lost, stop_name, merge))
                except (OSError, TimeoutError):
                    # the scheduler out of reach for now: its futures say
                    # when it is gone for good
                    continue
                if not rehomed:
                    ok = False
                    if on_error == "stop":
                        return False
        finally:
            if pending:
                try:
                    stop.set()
                    self.client.cancel(list(pending))
                except Exception:            # noqa: BLE001  (the scheduler is gone)
                    pass
        return ok

    def _changes(self, before, say, bound):
        """The workers now; says which machines left or joined since
        `before` (a point running on one that left is measured again)."""
        now = set(self.workers())
        if say:
            for a in sorted(before - now):
                say("machine %s left the cluster; a point it was measuring is measured "
                    "again%s" % (self.labels.get(a, a), " when it is back" if bound else ""))
            for a in sorted(now - before):
                if a not in self.labels:
                    self._name(self.client.run(whoami, workers=[a]))
                say("machine %s joined the cluster" % self.labels[a])
        return now

    def _submit(self, task, stop_name, n, addr):
        argv, design, threads, _ = task
        key = "iommu-stress-%s-%d-%s" % (re.sub(r"[^\w.+@:-]", "_", design), threads,
                                         uuid.uuid4().hex[:8])
        return self.client.submit(measure, argv, stop_name, key=key, pure=False,
                                  resources={RESOURCE: 1}, priority=-n,
                                  workers=[addr] if addr else None, allow_other_workers=False)

    def _rehome(self, pending, lost, stop_name, merge):
        """A task bound to a worker that left goes to the worker that now
        carries its machine's name (one restarted, or started again with
        the same --name); after RETURN_S without one its point fails.
        Returns False when a point failed so."""
        live = set(self.workers())
        unnamed = [a for a in live if a not in self.labels]
        if unnamed:
            self._name(self.client.run(whoami, workers=unnamed))
        where = {self.labels[a]: a for a in live}
        ok = True
        for fut, (task, n, addr) in list(pending.items()):
            if addr is None or addr in live:
                continue
            name = task[3]
            if name in where:
                lost.pop(name, None)
                self.client.cancel([fut])
                del pending[fut]
                pending[self._submit(task, stop_name, n, where[name])] = (task, n, where[name])
                continue
            since = lost.setdefault(name, time.monotonic())
            if time.monotonic() - since > RETURN_S:
                self.client.cancel([fut])
                del pending[fut]
                ok = merge(task, None, "machine %s left the cluster and did not come back "
                                       "within %.0f s" % (name, RETURN_S)) and ok
        return ok


def _first_line(e):
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def point_argv(opts, design, threads):
    """The command line that measures one point as `opts` say: every
    option spelled out, so that the worker's defaults, presets and config
    files play no part.  The workload's keys are among them; its name is
    left out (a workload file of the client's need not exist there)."""
    from harness.cli import FLAGS
    argv = ["--designs", design, "--threads", str(threads)]
    for flag, name, _ in FLAGS:
        v = opts.get(name)
        if name in ("threads", "workload") or v is None:
            continue
        if name == "sizes":
            v = ",".join("%d:%r" % (pages, float(w)) for pages, w in v)
        argv += [flag, repr(v) if isinstance(v, float) else str(v)]
    for name in ("check", "premapped", "rogue_device", "lock_timing", "diag", "huge", "iotlb_walks"):
        if opts.get(name):
            argv.append("--" + name.replace("_", "-"))
    return argv


# ------------------------------------------------------------- the command

def _identity(host):
    """A machine as the results' `machine` holds it."""
    return {k: host.get(k) for k in FINGERPRINT}


def _common(machines):
    """The fingerprint keys on which every machine agrees: the document's
    `machine` of a sweep on each machine."""
    hosts = list(machines.values())
    return {k: hosts[0].get(k) for k in FINGERPRINT
            if all(h.get(k) == hosts[0].get(k) for h in hosts)}


def _refuse_mixed(machines):
    names = list(machines)
    for n in names[1:]:
        keys = same_kind(machines[names[0]], machines[n])
        if keys:
            raise UsageError(
                "the cluster's machines are not of one kind: %s and %s differ in %s (%s vs %s); "
                "give --allow-mixed to spread the points over them all the same, or "
                "--each-machine to compare them" % (
                    names[0], n, ", ".join(keys), machines[names[0]].get(keys[0]),
                    machines[n].get(keys[0])))


def _why(result, error):
    """A failed task's reason in one line."""
    if error is not None:
        if type(error).__name__ == "KilledWorker":
            return "its machine was lost while measuring it, on every try (Dask's KilledWorker)"
        return _first_line(error)
    if result["failures"]:
        return result["failures"][-1]
    for line in reversed(result["errors"]):
        return re.sub(r"^iommu-stress: (error: )?", "", line)
    return "the point's command ended with status %d" % result["rc"]


def command(args, opts):
    """`sweep --cluster`: the cli's sweep, its points measured on the
    cluster's machines.  Returns the exit status."""
    from pathlib import Path

    from harness import results
    if args.json is not None and not args.json.strip():
        raise UsageError("--json: the path is empty")
    json_path = args.json or args.resume
    if json_path:
        results.writable(Path(json_path))
    t_start = time.monotonic()
    cluster = Cluster(args.cluster)
    try:
        return _command(cluster, args, opts, json_path, t_start)
    finally:
        cluster.close()


def _command(cluster, args, opts, json_path, t_start):
    from tqdm import tqdm

    from harness import cli, readout, results, signals
    each = args.each_machine
    machines = cluster.machines()
    if not each and not args.allow_mixed:
        _refuse_mixed(machines)
    for host, names in cluster.shared_hosts(machines).items():
        tqdm.write("%s: warning: %s share the host %s: their points share its cores"
                   % (cli.PROG, " and ".join(names), host), file=sys.stderr)
    first = _identity(next(iter(machines.values())))
    machine_info = _common(machines) if each else first
    kept, base = cli._resumed(args, opts, None if each else machine_info)
    mode = "each-machine" if each else "spread"
    if kept and args.resume:
        had = (results.load(args.resume).get("cluster") or {}).get("mode", "spread")
        if had != mode:
            raise UsageError("%s was measured %s; this run asks for %s" % (
                args.resume, "on each machine (--each-machine)" if had == "each-machine"
                else "spread over machines, or on one", "--each-machine" if each else
                "the points spread over machines (no --each-machine)"))
    done = {((p.get("host") or {}).get("name") if each else None, p["design"], p["threads"])
            for p in kept}
    tasks = [(point_argv(opts, d, t), d, t, m) for t in opts["threads"] for d in opts["designs"]
             for m in (machines if each else [None]) if (m, d, t) not in done]
    held = dict(opts, designs=cli._union(opts["designs"], [p["design"] for p in kept]),
                threads=sorted(set(opts["threads"]) | {p["threads"] for p in kept}))
    res = results.ResultsFile(json_path, machine_info, held, " ".join([cli.PROG] + sys.argv[1:]),
                              points=kept, base=base)
    res.doc["cluster"] = {"scheduler": cluster.address, "mode": mode}
    if args.verbose:
        cli._say("%d points on %d machine%s: %s" % (len(tasks), len(machines),
                                                    "" if len(machines) == 1 else "s",
                                                    ", ".join(machines)))
    rank = {task[1:]: n for n, task in enumerate(tasks)}
    merged = []
    bar = tqdm(total=len(tasks), unit="point", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def record(what, *a):
        signals.check()
        with signals.deferred():
            what(*a)

    def merge(task, result, error):
        _, design, threads, name = task
        bar.update(1)
        where = name
        if result is not None:
            host = dict(result["host"], name=cluster.label(result["host"]),
                        cycles_per_ns=result["cycles_per_ns"])
            host.pop("worker_name", None)
            where = host["name"]
        what = "%s at %d threads%s" % (design, threads, " on %s" % where if where else "")
        if result is not None and result["rc"] == 0 and result["points"]:
            odd = [] if each or args.allow_mixed else same_kind(first, host)
            if not odd:
                for pt in result["points"]:
                    # in the sweep's order, whichever machine finished first
                    merged.append(rank[task[1:]])
                    merged.sort()
                    at = len(kept) + merged.index(rank[task[1:]])
                    record(res.add, dict(pt, host=host), at)
                    if readout.stall_warning(pt):
                        tqdm.write("%s: %s" % (cli.PROG, readout.stall_warning(pt)),
                                   file=sys.stderr)
                bar.set_description(what)
                if args.verbose:
                    cli._say("%s: merged" % what)
                return True
            why = ("its machine differs from the cluster's in %s (a machine that joined "
                   "later?): not merged; give --allow-mixed to keep such points" % ", ".join(odd))
        else:
            why = _why(result, error)
        record(res.fail, "%s: %s" % (what, why))
        tqdm.write("%s: point failed: %s: %s" % (cli.PROG, what, why), file=sys.stderr)
        return False

    try:
        try:
            ok = cluster.sweep(tasks, merge, args.on_error,
                               say=lambda line: tqdm.write("%s: %s" % (cli.PROG, line),
                                                           file=sys.stderr))
            if ok:
                record(res.finish)
        finally:
            bar.close()
    except BaseException:
        cli._print_results(res.doc, args, opts)
        raise
    cli._print_results(res.doc, args, opts)
    if not each:
        cli._print_published(res.doc, args.preset_extras)
    print("%d points measured on %d machine%s in %.1f s%s"
          % (len(res.doc["points"]) - len(kept), len(machines), "" if len(machines) == 1 else "s",
             time.monotonic() - t_start,
             ", %d kept from %s" % (len(kept), args.resume) if kept else ""), file=sys.stderr)
    return 0 if ok else 1
