#!/usr/bin/env python3
"""Runs one Locust scenario of load-tests/scenarios/ against DashStream and judges it
(docs/LOAD-TESTS.md). Started by load-tests/run.sh, which provides the virtual environment.

Without --target it brings up a local stack for the run, reusing deploy/local/: Kafka and
Redis (services.sh, started if they are not up and stopped again after), a topic and key
prefix of its own, 2 ingest processes in one group, 3 gateways with GATEWAY_AUTH=jwt behind
nginx (lb.sh), and the synthetic producer. Every process it starts is stopped by PID at the
end, also on Ctrl-C or a failure.

Writes load-tests/results/<scenario>-<time>/: Locust's report.html and CSVs, custom.json (the
scenario's counters), summary.json (every threshold with its measured value) and PNG plots.
Prints the summary; exits 1 when a threshold fails, 2 when the run itself could not be done.
"""

import argparse
import csv
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = ["fanout", "resume_storm", "connection_ramp", "slow_consumers", "filters"]
ALIASES = {s.replace("_", "-"): s for s in SCENARIOS}


def log(msg):
    print(f"[load-tests] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:  # noqa: BLE001 - not up (yet)
        return None, ""


def metric(text, name):
    """The sum of every sample of `name` in a Prometheus text exposition."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except ValueError:
                pass
    return total if seen else None


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 200_000) if hard != resource.RLIM_INFINITY else 200_000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Procs:
    """Children started by this run, stopped by PID (SIGTERM, then SIGKILL after 15 s)."""

    def __init__(self):
        self.items = []

    def start(self, name, cmd, env=None, log_path=None):
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=raise_nofile
        )
        self.items.append((name, p))
        return p

    def stop_all(self):
        for _, p in reversed(self.items):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.time() + 15
        for name, p in reversed(self.items):
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) did not stop in 15 s: SIGKILL")
                p.kill()
                p.wait()
        self.items.clear()


def wait_until(what, check, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Stack:
    """The local system under test (see the module's doc)."""

    def __init__(self, args, out, procs):
        self.args, self.out, self.procs = args, out, procs
        self.bin = ROOT / "target" / args.profile
        self.gateways = []  # (name, addr, Popen)
        self.ingests = []
        self.started_services = False
        self.lb_state = out / "lb-state"
        self.lb_started = False

    def build(self):
        missing = [b for b in ("dashstream", "ingest", "gateway") if not (self.bin / b).exists()]
        if missing or self.args.build:
            flags = ["--release"] if self.args.profile == "release" else []
            log(f"building {', '.join(missing) or 'the binaries'} ({self.args.profile})")
            subprocess.run(
                ["cargo", "build", "--locked", *flags, "-p", "dashstream", "-p", "dashstream-ingest", "-p", "dashstream-gateway"],
                cwd=ROOT,
                check=True,
            )

    def services_env(self):
        path = subprocess.run(
            [str(ROOT / "deploy/local/services.sh"), "path"], capture_output=True, text=True, check=True
        ).stdout.strip()
        env = {}
        for line in Path(path).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip('"')
        return env

    def up(self):
        self.build()
        # Stopped again at the end only if neither was running: a Kafka or Redis that was up
        # may serve someone else (./test.sh, another run).
        up = [subprocess.run([str(ROOT / f"deploy/local/{s}.sh"), "status"], capture_output=True).returncode == 0
              for s in ("kafka", "redis")]
        if not any(up):
            log("starting Kafka and Redis (deploy/local/services.sh up)")
            self.started_services = True
        subprocess.run([str(ROOT / "deploy/local/services.sh"), "up"], check=True, stdout=subprocess.DEVNULL)
        svc = self.services_env()
        stamp = self.out.name.replace("_", "-")
        self.topic = f"lt-{stamp}"
        self.prefix = f"lt-{stamp}"
        base = dict(os.environ)
        base.update(
            KAFKA_BROKERS=svc["KAFKA_BROKERS"],
            REDIS_URL=svc["REDIS_URL"],
            KAFKA_TOPIC=self.topic,
            REDIS_KEY_PREFIX=self.prefix,
            RUST_LOG="warn",
        )
        self.base_env = base
        subprocess.run(
            [str(self.bin / "dashstream"), "provision", "--partitions", str(self.args.partitions)],
            env=base,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        secret = self.out / "jwt-secret"
        secret.write_bytes(os.urandom(48).hex().encode())
        secret.chmod(0o600)
        self.secret = secret

        def token(tenants):
            return subprocess.run(
                [str(self.bin / "dashstream"), "token", "--secret-file", str(secret), "--tenants", tenants,
                 "--audience", "dsload", "--ttl-secs", str(self.args.duration + 3600)],
                capture_output=True, text=True, check=True,
            ).stdout.strip()

        self.token = token("*")
        self.tenant_tokens = {f"tenant-{i}": token(f"tenant-{i}") for i in range(4)}
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        for i in (1, 2):
            addr = f"127.0.0.1:{free_port()}"
            env = dict(base, INGEST_LISTEN=addr, INGEST_INSTANCE_ID=f"lt-ingest-{i}", KAFKA_GROUP_ID=f"{self.topic}-ingest")
            p = self.procs.start(f"ingest-{i}", [str(self.bin / "ingest")], env, logs / f"ingest-{i}.log")
            self.ingests.append((f"ingest-{i}", addr, p))
        for i in (1, 2, 3):
            addr = f"127.0.0.1:{free_port()}"
            env = dict(
                base,
                GATEWAY_LISTEN=addr,
                GATEWAY_REPLICA_ID=f"lt-gateway-{i}",
                GATEWAY_TRUSTED_PROXIES="127.0.0.1",
                GATEWAY_AUTH="jwt",
                GATEWAY_JWT_HS256_SECRET_FILE=str(secret),
                GATEWAY_JWT_AUDIENCE="dsload",
                # Every user comes from this machine through nginx: no per-address limits.
                GATEWAY_MAX_CONNECTIONS_PER_IP="1000000",
                GATEWAY_MAX_CONNECTIONS="50000",
                GATEWAY_UPGRADE_RATE_PER_IP="0",
            )
            env.update(self.args.gateway_env)
            p = self.procs.start(f"gateway-{i}", [str(self.bin / "gateway")], env, logs / f"gateway-{i}.log")
            self.gateways.append((f"gateway-{i}", addr, p))
        for name, addr, p in self.ingests + self.gateways:

            def ready(name=name, addr=addr, p=p):
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {logs / (name + '.log')}")
                return http_get(f"http://{addr}/readyz")[0] == 200

            wait_until(f"{name} ready on {addr}", ready, 60)
        self.lb_port = free_port()
        self.lb_state.mkdir(exist_ok=True)
        self.lb_started = True  # lb.sh stop is harmless if the start failed half-way
        subprocess.run(
            [str(ROOT / "deploy/local/lb.sh"), "start", str(self.lb_port), *[a for _, a, _ in self.gateways]],
            env=dict(os.environ, DASHSTREAM_STATE_DIR=str(self.lb_state)),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.producer = self.procs.start(
            "producer",
            [str(self.bin / "dashstream"), "produce", "--rate", str(self.args.rate), "--threads", "50",
             "--tenants", "4", "--thread-prefix", "lt", "--payload-bytes", str(self.args.payload_bytes)],
            base,
            logs / "producer.log",
        )
        log(f"stack up: topic {self.topic}, {len(self.gateways)} gateways behind nginx on 127.0.0.1:{self.lb_port}, producer at {self.args.rate} events/s")
        return f"ws://127.0.0.1:{self.lb_port}"

    def down(self):
        self.procs.stop_all()
        if self.lb_started:
            subprocess.run(
                [str(ROOT / "deploy/local/lb.sh"), "stop"],
                env=dict(os.environ, DASHSTREAM_STATE_DIR=str(self.lb_state)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if self.started_services and not self.args.keep_services:
            subprocess.run([str(ROOT / "deploy/local/services.sh"), "down"], stdout=subprocess.DEVNULL)

    GATEWAY_COUNTERS = (
        "dashstream_gateway_catchup_switches_total",
        "dashstream_gateway_live_buffer_sheds_total",
        "dashstream_gateway_gaps_total",
        "dashstream_gateway_events_sent_total",
    )

    def gateway_counters(self):
        """What the live gateways did for the users (summed): catch-up switches, sheds, gaps,
        events sent, and disconnects by reason."""
        total = {}
        for _, addr, p in self.gateways:
            if p.poll() is not None:
                continue
            _, text = http_get(f"http://{addr}/metrics")
            for name in self.GATEWAY_COUNTERS:
                total[name] = total.get(name, 0) + (metric(text, name) or 0)
            for m in re.finditer(r'^dashstream_gateway_disconnects_total\{reason="([a-z_]+)"\} (\S+)$', text, re.M):
                key = f"disconnects{{{m.group(1)}}}"
                total[key] = total.get(key, 0) + float(m.group(2))
        return {k: int(v) for k, v in total.items() if v}

    def connections(self):
        """gateway name -> (connected clients, RSS KiB, pid), for the live ones."""
        out = {}
        for name, addr, p in self.gateways:
            if p.poll() is not None:
                continue
            _, text = http_get(f"http://{addr}/metrics")
            clients = metric(text, "dashstream_gateway_connected_clients") or 0
            rss = 0
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
            except OSError:
                pass
            out[name] = (clients, rss, p.pid)
        return out


def sum_custom(out):
    """The scenario's tallies: the sum of what each Locust process wrote when it quit."""
    total = {"counters": {}, "samples": {}, "lists": {}, "processes": 0}
    for f in sorted(out.glob("custom-*.json")):
        part = json.loads(f.read_text())
        total["processes"] += 1
        for k, v in part["counters"].items():
            if k.startswith(("max_", "last_")):
                total["counters"][k] = max(total["counters"].get(k, 0), v)
            else:
                total["counters"][k] = total["counters"].get(k, 0) + v
        for key in ("samples", "lists"):
            for k, v in part[key].items():
                total[key].setdefault(k, []).extend(v)
    (out / "custom.json").write_text(json.dumps(total))
    return total


def read_stats(prefix):
    """Locust's statistics per request name: its final state (written by dsload.py when the
    local or master process quits), else the CSV."""
    final = Path(prefix).parent / "locust-final.json"
    if final.exists():
        return json.loads(final.read_text())
    rows = {}
    path = Path(f"{prefix}_stats.csv")
    if path.exists():
        with path.open() as f:
            for r in csv.DictReader(f):
                rows[r["Name"]] = r
    return rows


def num(row, key, default=0.0):
    try:
        v = row.get(key, "")
        return float(v) if v not in ("", "N/A") else default
    except (TypeError, ValueError, AttributeError):
        return default


def percentile(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(round((len(v) - 1) * p / 100.0)))]


def plot(prefix, out, samples):
    """latency.png, connections.png and events.png from Locust's stats history (and the
    runner's own samples of the gateways)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return []
    lat, agg = [], []
    with path.open() as f:
        for r in csv.DictReader(f):
            t = int(r["Timestamp"])
            if r["Name"] == "event latency":
                lat.append((t, num(r, "50%"), num(r, "95%"), num(r, "99%"), num(r, "Requests/s")))
            elif r["Name"] == "Aggregated":
                agg.append((t, num(r, "User Count")))
    def chart(name, title, ylabel, series):
        """One PNG: `series` is [(label or None, xs, ys)]."""
        fig, ax = plt.subplots(figsize=(9, 4))
        for label, xs, ys in series:
            ax.plot(xs, ys, label=label)
        ax.set_xlabel("seconds")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if any(label for label, _, _ in series):
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        made.append(name)

    made = []
    if lat:
        t0 = lat[0][0]
        ts = [x[0] - t0 for x in lat]
        chart("latency.png", "Event latency percentiles (Locust's rolling window)", "producer-to-client latency, ms",
              [(label, ts, [x[i] for x in lat]) for i, label in ((1, "p50"), (2, "p95"), (3, "p99"))])
        chart("events.png", "Events received per second", "events/s received, all users", [(None, ts, [x[4] for x in lat])])
    if agg or samples:
        t0 = agg[0][0] if agg else samples[0][0]
        series = [("Locust users", [x[0] - t0 for x in agg], [x[1] for x in agg])] if agg else []
        for n in sorted({n for _, per in samples for n in per}):
            series.append((f"{n} connections", [t - t0 for t, _ in samples], [per.get(n, (0, 0, 0))[0] for _, per in samples]))
        chart("connections.png", "Connections over time", "connections", series)
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS + list(ALIASES)))
    ap.add_argument("--users", type=int, help="users (connections); default per scenario")
    ap.add_argument("--rate", type=float, help="producer events/s (local stack; default 200, 50 for connection-ramp)")
    ap.add_argument("--payload-bytes", type=int, default=200, help="producer payload size of each event (local stack)")
    ap.add_argument("--duration", type=int, help="seconds; default per scenario")
    ap.add_argument("--spawn-rate", type=float, help="users started per second")
    ap.add_argument("--workers", type=int, default=0, help="run distributed: one master and K local workers")
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--profile", choices=["release", "debug"], default="release", help="which build of the binaries the local stack runs")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the local gateways (repeatable), e.g. GATEWAY_LIVE_BUFFER_BYTES=2097152")
    ap.add_argument("--build", action="store_true", help="build the binaries even when present")
    ap.add_argument("--keep-services", action="store_true", help="leave Kafka and Redis up if this run started them")
    ap.add_argument("--target", help="a deployed gateway (ws[s]:// or http[s]:// URL of the load balancer): no local stack")
    ap.add_argument("--token", default=os.environ.get("DSLOAD_TOKEN", ""), help="with --target: a JWT for every tenant")
    ap.add_argument("--tenant-tokens", help="with --target: a JSON file tenant -> token granting that tenant only (filters)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--max-p99-ms", type=float, default=1000.0, help="fan-out: event latency p99 bound")
    ap.add_argument("--max-resume-s", type=float, default=30.0, help="resume storm: kill-to-last-resume bound")
    ap.add_argument("--kill-at", type=float, help="resume storm: seconds into the run (default 40%% of it)")
    ap.add_argument("--hold", type=float, default=30.0, help="connection ramp: seconds at the peak")
    ap.add_argument("--slow-at", type=float, help="slow consumers: seconds into the run the slow ones stop reading (default 30%%)")
    ap.add_argument("--slow-for", type=float, help="slow consumers: seconds they do not read (default 30%%)")
    ap.add_argument("--slow-factor", type=float, default=3.0, help="slow consumers: bound on the others' p99 under load / baseline")
    ap.add_argument("--slow-slack-ms", type=float, default=50.0, help="slow consumers: added to the bound (a baseline of a few ms is noise)")
    args = ap.parse_args()
    try:
        args.gateway_env = dict(kv.split("=", 1) for kv in args.gateway_env)
    except ValueError:
        print("--gateway-env takes NAME=VALUE", file=sys.stderr)
        return 2
    scenario = ALIASES.get(args.scenario, args.scenario)
    defaults = {
        "fanout": (500, 60),
        "resume_storm": (300, 60),
        "connection_ramp": (5000, 0),
        "slow_consumers": (200, 60),
        "filters": (60, 45),
    }[scenario]
    users = args.users or defaults[0]
    if args.rate is None:
        args.rate = 50.0 if scenario == "connection_ramp" else 200.0
    spawn_rate = args.spawn_rate or (100.0 if scenario == "connection_ramp" else max(10.0, users / 10.0))
    if scenario == "connection_ramp":
        duration = int(users / spawn_rate * 2 + args.hold + 15)
    else:
        duration = args.duration or defaults[1]
    args.duration = duration
    if scenario == "filters" and args.workers:
        print("filters compares each user with a reference user in the same process: run it without --workers", file=sys.stderr)
        return 2
    if scenario in ("resume_storm", "connection_ramp") and args.target:
        print(f"{scenario} needs the local stack (it kills a gateway / reads the gateways' memory)", file=sys.stderr)
        return 2

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.results) / f"{scenario}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    procs = Procs()
    stack = None
    samples = []  # (time, {gateway: (connections, rss, pid)})
    notes = {}
    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.target:
            host = args.target
            token = args.token
            tenant_tokens = json.loads(Path(args.tenant_tokens).read_text()) if args.tenant_tokens else {}
        else:
            stack = Stack(args, out, procs)
            host = stack.up()
            token, tenant_tokens = stack.token, stack.tenant_tokens
        env = dict(
            os.environ,
            PYTHONPATH=str(HERE),
            DSLOAD_OUT=str(out),
            DSLOAD_TOKEN=token,
            DSLOAD_TENANT_TOKENS=json.dumps(tenant_tokens),
            DSLOAD_THREAD_PREFIX="lt",
            DSLOAD_USERS=str(users),
            DSLOAD_SPAWN_RATE=str(spawn_rate),
            DSLOAD_HOLD=str(args.hold),
            DSLOAD_SLOW_AT=str(args.slow_at if args.slow_at is not None else round(duration * 0.3)),
            DSLOAD_SLOW_FOR=str(args.slow_for if args.slow_for is not None else round(duration * 0.3)),
        )
        locust = str(Path(sys.executable).parent / "locust")
        prefix = str(out / "locust")
        cmd = [
            locust, "-f", str(HERE / "scenarios" / f"{scenario}.py"), "--headless",
            "-u", str(users), "-r", str(spawn_rate), "-t", f"{duration}s", "--host", host,
            "--csv", prefix, "--csv-full-history", "--html", str(out / "report.html"),
            "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
        ]
        workers = []
        if args.workers:
            mport = free_port()
            cmd += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(mport),
                    "--expect-workers", str(args.workers), "--expect-workers-max-wait", "60"]
        log(f"{scenario}: {users} users, {duration} s, {spawn_rate:g} users/s" + (f", {args.workers} workers" if args.workers else ""))
        master = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=open(out / "locust.log", "wb"), stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        procs.items.append(("locust", master))
        for i in range(args.workers):
            w = procs.start(
                f"locust-worker-{i}",
                [locust, "-f", str(HERE / "scenarios" / f"{scenario}.py"), "--worker", "--master-host", "127.0.0.1",
                 "--master-port", str(mport), "--loglevel", "WARNING"],
                env,
                out / f"locust-worker-{i}.log",
            )
            workers.append(w)
        # The run starts when the users connect (a distributed master first waits for workers).
        t_start = None
        kill_at = args.kill_at if args.kill_at is not None else duration * 0.4
        killed = None
        while master.poll() is None:
            time.sleep(1.0)
            if stack is not None:
                samples.append((time.time(), stack.connections()))
                if t_start is None and any(v[0] for v in samples[-1][1].values()):
                    t_start = samples[-1][0]
            if scenario == "resume_storm" and killed is None and t_start and time.time() - t_start >= kill_at and stack:
                per = stack.connections()
                name, (clients, _, pid) = max(per.items(), key=lambda kv: kv[1][0])
                os.kill(pid, signal.SIGKILL)
                killed = {"gateway": name, "connections": clients, "at": time.time()}
                log(f"SIGKILL {name} (pid {pid}) holding {clients:.0f} connections")
        rc = master.wait()
        if stack is not None:
            notes["gateway_counters"] = stack.gateway_counters()
        for w in workers:
            w.wait(timeout=30)
        if rc != 0:
            # With --exit-code-on-error 0, Locust fails only when the run itself failed.
            raise RuntimeError(f"locust exited {rc}; see {out / 'locust.log'}")
        notes["killed"] = killed
    except KeyboardInterrupt:
        log("interrupted: stopping everything this run started")
        return 2
    except Exception as e:  # noqa: BLE001 - report, stop what was started
        log(f"the run failed: {e}")
        return 2
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack:
            stack.down()
        else:
            procs.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    custom = sum_custom(out)
    c = custom["counters"]
    stats = read_stats(prefix)
    lat = stats.get("event latency", {})
    conn = stats.get("connect", {})
    resume = stats.get("resume", {})
    figures = {
        "users": users,
        "duration_s": duration,
        "producer_rate": args.rate if not args.target else None,
        "payload_bytes": args.payload_bytes if not args.target else None,
        "gateway_env": args.gateway_env,
        "workers": args.workers,
        "events_received": int(c.get("events", 0)),
        "frames_received": int(c.get("frames", 0)),
        "events_per_s": round(num(lat, "Request Count") / max(1, duration), 1),
        "latency_ms": {k: num(lat, k) for k in ("50%", "95%", "99%", "99.9%", "100%")},
        "connect_ms": {k: num(conn, k) for k in ("50%", "95%", "99%", "100%")},
        "connects": int(num(conn, "Request Count")),
        "connect_errors": int(c.get("connect_errors", 0)),
        "disconnects": int(c.get("disconnects", 0)),
        "resumes": int(c.get("resumes", 0)),
        "resume_errors": int(c.get("resume_errors", 0)),
        "resume_ms": {k: num(resume, k) for k in ("50%", "95%", "99%", "100%")},
        "holes": int(c.get("holes", 0)),
        "hole_events": int(c.get("hole_events", 0)),
        "duplicates": int(c.get("duplicates", 0)),
        "gaps": int(c.get("gaps", 0)),
        "gateway_counters": notes.get("gateway_counters", {}),
    }
    checks = []

    def check(name, value, op, bound, meaning):
        ok = {"==": value == bound, "<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]
        checks.append({"threshold": name, "measured": value, "op": op, "bound": bound, "passed": bool(ok), "meaning": meaning})

    check("holes", figures["holes"], "==", 0, "events missing between two received ones of a partition, not named by a gap frame")
    check("duplicates", figures["duplicates"], "==", 0, "an event received twice (or out of order)")
    check("events received", figures["events_received"], ">", 0, "the users received events at all")
    figures["protocol_errors"] = int(c.get("protocol_errors", 0))
    check("protocol errors", figures["protocol_errors"], "==", 0,
          "frames that are not the protocol's (malformed, unexpected, a resume not marked resumed)")
    expected_processes = (args.workers + 1) if args.workers else 1
    check("Locust processes that reported", custom.get("processes", 0), "==", expected_processes,
          "each local, master or worker process wrote its tallies")
    if scenario != "slow_consumers":
        check("gaps", figures["gaps"], "==", 0, "Redis holds the whole run: any gap frame here is a fault")
    # The scenario's own counters (each process's file, summed) and Locust's request statistics
    # (reported to the master) count the same events: a difference means Locust's figures
    # miss a worker's last report.
    check("events counted alike", abs(figures["events_received"] - int(num(lat, "Request Count"))), "==", 0,
          "events in the scenario's counters minus events in Locust's statistics")
    if scenario in ("fanout", "connection_ramp", "filters", "slow_consumers"):
        check("connect errors", figures["connect_errors"], "==", 0, "upgrades that failed")
    if scenario == "fanout":
        check("event latency p99 ms", figures["latency_ms"]["99%"], "<", args.max_p99_ms, "producer-to-client latency, over every event")
    if scenario == "resume_storm":
        killed = notes.get("killed")
        check("a gateway was killed", 1 if killed else 0, "==", 1, "the runner SIGKILLed the replica holding the most connections")
        held = int(killed["connections"]) if killed else 0
        check("users that lost their connection", figures["disconnects"], ">=", max(1, held), "at least the killed replica's connections")
        check("users resumed", figures["resumes"], "==", figures["disconnects"], "every lost connection came back with its cursor")
        # The killed replica's own users, by the `server` of their welcome frames: each must
        # have a later connection to another replica.
        victim = f"lt-{killed['gateway']}" if killed else None
        users = custom["lists"].get("user_servers", [])
        on_victim = [u for u in users if victim in u["servers"]]
        moved = [u for u in on_victim if u["servers"][-1] != victim]
        figures["killed_replica_users"] = len(on_victim)
        check("the killed replica's users", len(on_victim), ">=", max(1, held), "users whose welcome named the killed replica")
        check("the killed replica's users that resumed elsewhere", len(moved), "==", len(on_victim),
              "each has a later connection to another replica")
        last = c.get("last_resume_at", 0)
        took = round(last - killed["at"], 2) if killed and last else None
        figures["killed"] = killed
        figures["time_until_all_resumed_s"] = took
        check("time until all resumed s", took if took is not None else 1e9, "<=", args.max_resume_s, "from the kill to the last resume")
    if scenario == "connection_ramp":
        peak = max((sum(v[0] for v in per.values()) for _, per in samples), default=0)
        base = samples[0][1] if samples else {}
        at_peak = max(samples, key=lambda s: sum(v[0] for v in s[1].values()))[1] if samples else {}
        rss = {}
        for n, (clients, kib, _) in at_peak.items():
            b = base.get(n, (0, kib, 0))[1]
            rss[n] = {"connections": int(clients), "rss_kib": kib, "rss_at_start_kib": b,
                      "kib_per_connection": round((kib - b) / clients, 2) if clients else None}
        figures["peak_connections"] = int(peak)
        figures["gateway_memory"] = rss
        check("peak connections", int(peak), ">=", users, "connections the gateways held at once")
    if scenario == "slow_consumers":
        phases = {k: custom["samples"].get(k, []) for k in ("baseline", "stalled", "catchup")}
        p99 = {k: round(percentile(v, 99), 1) for k, v in phases.items()}
        figures["others_p99_ms"] = p99
        figures["others_samples"] = {k: len(v) for k, v in phases.items()}
        per_user = custom["lists"].get("user_events", [])
        slow = [u["events"] for u in per_user if u["slow"]]
        fast = [u["events"] for u in per_user if not u["slow"]]
        ratio = round((sum(slow) / len(slow)) / (sum(fast) / len(fast)), 3) if slow and fast and sum(fast) else 0.0
        figures["slow_users"] = len(slow)
        figures["slow_to_fast_events_ratio"] = ratio
        check("baseline and stalled samples", min(len(phases["baseline"]), len(phases["stalled"])), ">", 0,
              "latency samples of the other users before and during the stall")
        check("others' p99 while the slow ones stall ms", p99["stalled"], "<=",
              round(p99["baseline"] * args.slow_factor + args.slow_slack_ms, 1),
              f"within {args.slow_factor}x the baseline p99 + {args.slow_slack_ms} ms")
        check("slow users caught up", ratio, ">=", 0.95, "events a slow user received / a fast user's, on average")
    if scenario == "filters":
        figures["filter_users"] = custom["lists"].get("filter_users", [])
        figures["filter_compared"] = int(c.get("filter_compared", 0))
        check("filtered events compared", figures["filter_compared"], ">", 0, "the filtered users received events to compare")
        check("events missing from a filtered user", int(c.get("filter_missing", 0)), "==", 0, "matching events the reference saw and the user did not")
        check("events outside a user's filter", int(c.get("filter_mismatches", 0)) + int(c.get("filter_extra", 0)), "==", 0, "events that do not match the user's filter or token")
        if tenant_tokens:
            check("widened scopes", int(c.get("widened_scopes", 0)), "==", 0, "a one-tenant token asking for another tenant was not refused with 403")
            check("widenings refused", int(c.get("widen_refused", 0)), ">", 0, "scoped users tried to widen and got 403")
    findings = []
    fpath = Path(f"{prefix}_failures.csv")
    if fpath.exists():
        with fpath.open() as f:
            for r in csv.DictReader(f):
                findings.append(f"{r['Name']}: {r['Error']} (x{r['Occurrences']})")
    figures["findings"] = findings[:20]
    made = plot(prefix, out, samples)
    passed = all(x["passed"] for x in checks)
    summary = {
        "scenario": scenario,
        "command": " ".join(["load-tests/run.sh", *sys.argv[1:]]),
        "started_utc": stamp,
        "target": args.target or f"local stack ({args.profile} build)",
        "figures": figures,
        "thresholds": checks,
        "passed": passed,
        "files": ["report.html", "locust_stats.csv", "locust_stats_history.csv", "custom.json", *made],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("scenario", "figures")}, indent=2))
    for f in findings[:10]:
        print(f"finding  {f}")
    for x in checks:
        print(f"{'PASS' if x['passed'] else 'FAIL'}  {x['threshold']}: {x['measured']} {x['op']} {x['bound']}  ({x['meaning']})")
    print(f"results: {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
