//! `portvagt audit verify DIR`: walks every segment of a spool and checks the hash chain, the
//! sequence numbers and each segment's recorded head, and names the first record that breaks
//! them. A last line cut short by a crash is reported, not counted as tampering.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use super::spool::{GENESIS, RecordLine, SegmentHeader, segments, sha256_hex};

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// Segments checked.
    pub segments: u64,
    /// The chain head: the hash of the last record.
    pub head: String,
    /// A last line cut short (never acknowledged), if there is one.
    pub unfinished_tail: Option<PathBuf>,
}

/// The first place the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{segment}, line {line}: {problem}")]
pub struct ChainBroken {
    /// The segment file.
    pub segment: String,
    /// The line within it (1 = the header).
    pub line: u64,
    /// What is wrong.
    pub problem: String,
}

/// Verifies the spool in `dir`.
pub fn verify(dir: &Path) -> Result<ChainReport, ChainBroken> {
    let broken = |segment: &Path, line: u64, problem: String| ChainBroken {
        segment: segment.display().to_string(),
        line,
        problem,
    };
    let files = segments(dir).map_err(|e| broken(dir, 0, e.to_string()))?;
    if files.is_empty() {
        return Err(broken(dir, 0, "no segment files".into()));
    }
    let (mut next_seq, mut head) = (1u64, GENESIS.to_owned());
    let mut report = ChainReport {
        records: 0,
        segments: 0,
        head: head.clone(),
        unfinished_tail: None,
    };
    let last = files.len() - 1;
    for (index, (number, path)) in files.iter().enumerate() {
        let expected_number = files[0].0 + index as u64;
        if *number != expected_number {
            return Err(broken(
                path,
                0,
                format!("segment {expected_number} is missing"),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| broken(path, 0, e.to_string()))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut line_number = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| broken(path, line_number + 1, e.to_string()))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            if !line.ends_with(b"\n") {
                if index == last {
                    report.unfinished_tail = Some(path.clone());
                    break;
                }
                return Err(broken(path, line_number, "a line without its end".into()));
            }
            let body = &line[..line.len() - 1];
            if line_number == 1 {
                let header: SegmentHeader = serde_json::from_slice(body)
                    .map_err(|e| broken(path, 1, format!("not a segment header: {e}")))?;
                // The first segment may start later than 1 when older ones were archived.
                if index == 0 {
                    (next_seq, head) = (header.first_seq, header.head.clone());
                }
                if header.segment != *number || header.first_seq != next_seq || header.head != head
                {
                    return Err(broken(
                        path,
                        1,
                        format!(
                            "the header says segment {} from record {} after {}, the chain is at record {next_seq} after {head}",
                            header.segment, header.first_seq, header.head
                        ),
                    ));
                }
                continue;
            }
            let record: RecordLine<'_> = serde_json::from_slice(body)
                .map_err(|e| broken(path, line_number, format!("not a record: {e}")))?;
            if record.seq != next_seq {
                return Err(broken(
                    path,
                    line_number,
                    format!("record {} where record {next_seq} belongs", record.seq),
                ));
            }
            if record.prev != head {
                return Err(broken(
                    path,
                    line_number,
                    format!(
                        "record {next_seq} does not follow the record before it (altered, inserted or removed)"
                    ),
                ));
            }
            head = sha256_hex(body);
            next_seq += 1;
            report.records += 1;
        }
        if line_number == 0 {
            return Err(broken(path, 1, "an empty segment".into()));
        }
        report.segments += 1;
    }
    report.head = head;
    Ok(report)
}
