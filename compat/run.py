#!/usr/bin/env python3
"""Portvagt in front of another real FHIR server: the Helios FHIR Server (`helios-hfs`, Rust,
SQLite in memory).

    python3 compat/run.py [--only MODULE ...] [--keep]

Builds Helios once into .cache/compat/ (long: a release build of a large crate graph, so it is
not part of `make test`), starts it on a free port, loads the testbed's sample data (the same
transaction Bundle the reference backend is seeded with), and runs the end-to-end test modules
that make sense against any FHIR server with the gateway in front of it
(PORTVAGT_TEST_BACKEND). Prints, per module, which tests pass, and writes the same as Markdown
to target/compat/helios.md. The exit status is 0 when the run completed (failures are
findings about the pair, reported, not a broken run); 2 when Helios could not be built or
started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "compat"
HELIOS_VERSION = "0.2.5"
HFS = CACHE / "helios" / "bin" / "hfs"
SEED = ROOT / "testbed" / "backend" / "seed" / "bundle.json"
REPORT = ROOT / "target" / "compat" / "helios.md"

# The end-to-end modules whose tests make sense against any FHIR server: they use the shared
# backend (never a testbed process of their own) and no testbed-only feature is their point.
MODULES = [
    "proxying",
    "authorization",
    "bypass",
    "compartment",
    "paging",
    "xml",
    "authentication",
    "transport",
    "rules",
    "conformance",
]


def build() -> None:
    if HFS.exists():
        return
    print(f"building helios-hfs {HELIOS_VERSION} into {CACHE} (once; this takes long)", flush=True)
    subprocess.run(
        [
            "cargo", "install", "helios-hfs", "--version", HELIOS_VERSION, "--locked",
            "--root", str(CACHE / "helios"), "--target-dir", str(CACHE / "target"),
        ],
        check=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Accept", "application/fhir+json")
    if body is not None:
        req.add_header("Content-Type", "application/fhir+json")
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


DEFINITIONS = ROOT / "testbed" / "backend" / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"


def data_dir(workdir: Path) -> Path:
    """The definitions Helios reads at start (its `--data-dir`): the official R4 search
    parameters and the Patient CompartmentDefinition, as the testbed's FHIR definitions package
    ships them. Without them Helios knows almost no search parameter and ignores the rest."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "search-parameters-r4.json").write_bytes((DEFINITIONS / "search-parameters.json").read_bytes())
    compartment = json.loads((DEFINITIONS / "compartmentdefinition-patient.json").read_text())
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": compartment}]}
    (data / "compartment-definitions-r4.json").write_text(json.dumps(bundle))
    return data


def start(workdir: Path) -> tuple[subprocess.Popen, str]:
    data = data_dir(workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HFS_BASE_URL=base, HFS_UI_ENABLED="false", HFS_LOG_LEVEL="warn")
    log = open(workdir / "helios.log", "w")
    process = subprocess.Popen(
        [str(HFS), "--port", str(port), "--database-url", ":memory:", "--data-dir", str(data)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    for _ in range(120):
        if process.poll() is not None:
            raise RuntimeError(f"helios exited ({process.returncode}); see {workdir / 'helios.log'}")
        try:
            status, _ = request("GET", f"{base}/metadata")
            if status == 200:
                return process, base
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("helios did not answer /metadata within 60 s")


def seed(base: str) -> None:
    status, body = request("POST", base, SEED.read_bytes())
    if status != 200:
        raise RuntimeError(f"loading the sample data: {status} {body[:400]!r}")
    answer = json.loads(body)
    failed = [e for e in answer.get("entry", []) if not e.get("response", {}).get("status", "").startswith("2")]
    if failed:
        raise RuntimeError(f"loading the sample data: {len(failed)} entries failed: {failed[:2]}")


def run_tests(base: str, modules: list[str]) -> dict[str, dict[str, str]]:
    env = dict(os.environ, PORTVAGT_TEST_BACKEND=base)
    command = ["cargo", "test", "--locked", "-p", "portvagt", "--test", "e2e", "--", "--test-threads=2"]
    command += [f"{module}::" for module in modules]
    print("$ PORTVAGT_TEST_BACKEND=" + base + " " + " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    results: dict[str, dict[str, str]] = {module: {} for module in modules}
    for line in done.stdout.splitlines():
        match = re.match(r"^test (\w+)::(\w+) \.\.\. (ok|FAILED|ignored)", line)
        if match and match.group(1) in results:
            results[match.group(1)][match.group(2)] = match.group(3)
    (REPORT.parent).mkdir(parents=True, exist_ok=True)
    (REPORT.parent / "e2e-output.txt").write_text(done.stdout + done.stderr)
    return results


def report(results: dict[str, dict[str, str]], version: str) -> str:
    lines = [
        f"# Portvagt in front of Helios FHIR Server {version}",
        "",
        "| module | passed | failed |",
        "|---|---|---|",
    ]
    for module, tests in results.items():
        passed = sorted(t for t, r in tests.items() if r == "ok")
        failed = sorted(t for t, r in tests.items() if r == "FAILED")
        lines.append(f"| `{module}` | {len(passed)} | {len(failed)}{': ' + ', '.join(failed) if failed else ''} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this end-to-end module")
    parser.add_argument("--keep", action="store_true", help="leave Helios running and print its URL")
    args = parser.parse_args()
    modules = args.only or MODULES
    try:
        build()
    except subprocess.CalledProcessError as error:
        print(f"helios-hfs could not be built: {error}", file=sys.stderr)
        return 2
    workdir = CACHE / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        process, base = start(workdir)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    try:
        seed(base)
        print(f"helios at {base}, seeded with {SEED.relative_to(ROOT)}", flush=True)
        results = run_tests(base, modules)
        text = report(results, HELIOS_VERSION)
        REPORT.write_text(text)
        print(text)
        print(f"(written to {REPORT.relative_to(ROOT)}; test output in target/compat/e2e-output.txt)")
        if args.keep:
            print(f"helios still running at {base} (pid {process.pid})")
            return 0
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
