//! The reports: a summary for the terminal, JUnit XML for CI systems, JSON, and Markdown for an
//! integrator to attach to a certification request.

use std::fmt::Write as _;

use serde_json::json;

use crate::Verdict;

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case id.
    pub id: &'static str,
    /// Its title.
    pub title: &'static str,
    /// The requirement it checks.
    pub requirement: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// How long it took.
    pub seconds: f64,
}

/// Every case's result, for one target.
#[derive(Debug, Clone)]
pub struct Report {
    /// The FHIR base URL checked.
    pub target: String,
    /// In the order run.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// (passed, failed, skipped)
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for result in &self.results {
            match result.verdict {
                Verdict::Pass => counts.0 += 1,
                Verdict::Fail(_) => counts.1 += 1,
                Verdict::Skip(_) => counts.2 += 1,
            }
        }
        counts
    }

    /// Whether every case that ran passed (the exit code follows this).
    pub fn all_passed(&self) -> bool {
        self.counts().1 == 0
    }

    /// The ids of the cases that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Fail(_)))
            .map(|r| r.id)
            .collect()
    }

    /// The terminal summary: failures with their messages, skips with their reasons, counts.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let (passed, failed, skipped) = self.counts();
        for result in &self.results {
            match &result.verdict {
                Verdict::Fail(message) => {
                    let _ = writeln!(out, "FAIL {} {}\n     {message}", result.id, result.title);
                }
                Verdict::Skip(reason) => {
                    let _ = writeln!(out, "skip {} {} ({reason})", result.id, result.title);
                }
                Verdict::Pass => {}
            }
        }
        let _ = writeln!(
            out,
            "{}: {passed} passed, {failed} failed, {skipped} skipped",
            self.target
        );
        out
    }

    /// JUnit XML: one test suite, one test case per case; skips and failures as JUnit has them.
    pub fn junit(&self) -> String {
        let (_, failed, skipped) = self.counts();
        let total: f64 = self.results.iter().map(|r| r.seconds).sum();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites><testsuite name=\"portvagt-conformance\" tests=\"{}\" failures=\"{failed}\" skipped=\"{skipped}\" time=\"{total:.3}\">",
            self.results.len()
        );
        for result in &self.results {
            let _ = write!(
                out,
                "<testcase classname=\"{}\" name=\"{} {}\" time=\"{:.3}\">",
                xml(result.id.split('-').next().unwrap_or_default()),
                xml(result.id),
                xml(result.title),
                result.seconds
            );
            match &result.verdict {
                Verdict::Pass => {}
                Verdict::Fail(message) => {
                    let _ = write!(
                        out,
                        "<failure message=\"{}\">{}</failure>",
                        xml(message),
                        xml(result.requirement)
                    );
                }
                Verdict::Skip(reason) => {
                    let _ = write!(out, "<skipped message=\"{}\"/>", xml(reason));
                }
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("</testsuite></testsuites>\n");
        out
    }

    /// JSON: target, counts and every case.
    pub fn json(&self) -> String {
        let (passed, failed, skipped) = self.counts();
        let cases: Vec<_> = self
            .results
            .iter()
            .map(|result| {
                let (verdict, detail) = match &result.verdict {
                    Verdict::Pass => ("pass", None),
                    Verdict::Fail(message) => ("fail", Some(message.clone())),
                    Verdict::Skip(reason) => ("skip", Some(reason.clone())),
                };
                json!({
                    "id": result.id, "title": result.title, "requirement": result.requirement,
                    "verdict": verdict, "detail": detail, "seconds": result.seconds,
                })
            })
            .collect();
        serde_json::to_string_pretty(&json!({
            "target": self.target,
            "passed": passed, "failed": failed, "skipped": skipped,
            "cases": cases,
        }))
        .unwrap_or_default()
    }

    /// Markdown, for a certification request: the verdict first, then every case in a table.
    pub fn markdown(&self, generated_at: &str) -> String {
        let (passed, failed, skipped) = self.counts();
        let mut out = String::new();
        let _ = writeln!(out, "# Portvagt conformance report\n");
        let _ = writeln!(out, "- Target: `{}`", self.target);
        let _ = writeln!(out, "- Run: {generated_at}");
        let _ = writeln!(
            out,
            "- Result: **{}** — {passed} passed, {failed} failed, {skipped} skipped\n",
            if failed == 0 { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(out, "| case | title | requirement | verdict |");
        let _ = writeln!(out, "|---|---|---|---|");
        for result in &self.results {
            let verdict = match &result.verdict {
                Verdict::Pass => "pass".to_owned(),
                Verdict::Fail(message) => format!("**FAIL**: {}", md(message)),
                Verdict::Skip(reason) => format!("skipped: {}", md(reason)),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {verdict} |",
                result.id,
                md(result.title),
                md(result.requirement)
            );
        }
        out
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn md(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let result = |id, verdict| CaseResult {
            id,
            title: "a <case> & more",
            requirement: "RFC 6750 §3",
            verdict,
            seconds: 0.01,
        };
        Report {
            target: "https://fhir.example/fhir".into(),
            results: vec![
                result("AUTH-01", Verdict::Pass),
                result(
                    "AUTH-02",
                    Verdict::Fail("expected 401, got 200 | oops".into()),
                ),
                result("XCHG-01", Verdict::Skip("no SOSI ID card".into())),
            ],
        }
    }

    #[test]
    fn every_format_carries_every_verdict() {
        let report = report();
        assert_eq!(report.counts(), (1, 1, 1));
        assert!(!report.all_passed());
        assert_eq!(report.failed(), vec!["AUTH-02"]);
        let junit = report.junit();
        assert!(junit.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
        assert!(junit.contains("<failure message=\"expected 401, got 200 | oops\">"));
        assert!(junit.contains("a &lt;case&gt; &amp; more"));
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["failed"], 1);
        assert_eq!(json["cases"][2]["verdict"], "skip");
        let markdown = report.markdown("2026-11-30");
        assert!(markdown.contains("**FAIL**"));
        assert!(markdown.contains("got 200 \\| oops"));
        assert!(report.summary().contains("1 passed, 1 failed, 1 skipped"));
    }
}
