#!/usr/bin/env python3
"""Where Portvagt's CPU goes, per request: reads the perf recordings a `run.py --profile` run
kept (its work directory, with `profiles.json` naming what each recording was of) and prints,
for each part of the gateway, the CPU time spent in it (its own code and what it calls) divided
by the requests answered, in µs. perf's own cost is in the figures; compare them with each other.

    python3 load-tests/where.py /tmp/portvagt-load-XXXX [perf-1.data perf-2.data ...]

Needs `perf` (it runs `perf report`, about a minute per recording).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

# (part, symbols whose time is the part's; where several are listed, they do not call each other
# and their times add up).
PARTS = [
    ("the searchset's URLs rewritten (its patients read in the same scan)", ["portvagt::proxy::rewrite_bundle"]),
    ("the audit record's patients read from the answer (not a searchset)",
     ["portvagt_policy::compartment::patients_in_body"]),
    ("the audit events made and serialized", ["portvagt::audit::event::audit_events"]),
    ("the shipper reading the spool's files back", ["portvagt::audit::reading::read_batch"]),
    ("the shipper taking what the writer handed over", ["portvagt::audit::reading::take_handed"]),
    ("the shipper sending", ["portvagt::audit::shipper::Shipper::send::{{closure}}"]),
    # (A thread, by its name: its loop is inlined into the thread's start.)
    ("the spool's writer thread", ["thread:audit-spool"]),
    ("  of it `fdatasync`", ["__x64_sys_fdatasync"]),
    ("the consent decision", ["portvagt::proxy::consent::<impl portvagt::proxy::Proxy>::consent_verdict::{{closure}}",
                              "portvagt::proxy::consent::<impl portvagt::proxy::Proxy>::answer_blocks::{{closure}}"]),
    ("  of it the backend's Consent search", ["portvagt::consent::ConsentStore::fetch_limited::{{closure}}"]),
]


def split(data):
    """Per symbol, the share of the samples with it on the stack; and the CPU time recorded (ns)."""
    report = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "symbol", "-g", "none",
                             "--stdio", "-t", "|"], check=True, capture_output=True, text=True).stdout
    total = int(re.search(r"Event count \(approx\.\): (\d+)", report).group(1))
    shares = {}
    for line in report.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or line.startswith("#"):
            continue
        symbol = re.sub(r"^\[.\]\s*", "", fields[2].strip()).strip()
        share = float(fields[0].strip().rstrip("%")) / 100
        shares[symbol] = max(shares.get(symbol, 0.0), share)
    # Threads by name, for the parts that are a whole thread.
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "comm", "-g", "none",
                             "--stdio", "-t", "|"], check=True, capture_output=True, text=True).stdout
    for line in report.splitlines():
        fields = line.split("|")
        if len(fields) >= 2 and not line.startswith("#") and fields[0].strip().endswith("%"):
            shares["thread:" + fields[1].strip()] = float(fields[0].strip().rstrip("%")) / 100
    return shares, total


def main():
    work = Path(sys.argv[1])
    recorded = json.loads((work / "profiles.json").read_text())
    wanted = set(sys.argv[2:])
    columns = []
    for profile in recorded:
        if wanted and profile["file"] not in wanted:
            continue
        shares, total = split(work / profile["file"])
        per_request = total / 1000 / max(profile["answered"], 1)
        label = profile["mix"] or profile["path"]
        label = label.removeprefix("mix-").removesuffix(".tsv") + (" (h2)" if profile.get("http2") else "")
        label += f" at {profile['rate']}/s" if profile.get("rate") else ""
        column = {"all": per_request}
        for part, symbols in PARTS:
            column[part] = sum(shares.get(symbol, 0.0) for symbol in symbols) * per_request
        columns.append((f"{profile['target']}: {label}", column))
    print("| part | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for part in ["all"] + [part for part, _ in PARTS]:
        print(f"| {part} | " + " | ".join(f"{column[part]:.0f}" for _, column in columns) + " |")


if __name__ == "__main__":
    main()
