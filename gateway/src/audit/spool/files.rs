//! The spool's files: segment names and the listing of a folder, the segment header and record
//! lines, files created without following a planted link, lines read with a bound, and the scan
//! of a segment's end that a restart continues from. It writes no record: appending to the chain
//! is the writer's alone ([`super::writer`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::seal::{Seal, SealKind};

/// A segment's first line.
#[derive(Debug, Deserialize)]
pub(crate) struct SegmentHeader {
    pub(crate) segment: u64,
    pub(crate) first_seq: u64,
    pub(crate) head: String,
    /// The chain's id (absent in spools from before chains had one).
    #[serde(default)]
    pub(crate) chain: Option<String>,
}

/// A record line: an event (left unparsed) or a seal.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordLine<'a> {
    pub(crate) seq: u64,
    pub(crate) prev: String,
    #[serde(borrow, default)]
    pub(crate) event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) seal: Option<&'a str>,
}

impl RecordLine<'_> {
    /// Reads a record line: exactly one of an event or a seal.
    pub(crate) fn parse(body: &[u8]) -> Result<RecordLine<'_>, String> {
        let record: RecordLine<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if record.event.is_some() == record.seal.is_some() {
            return Err("a record holds an event or a seal".into());
        }
        Ok(record)
    }
}

/// The name of segment `number`.
pub(crate) fn segment_name(number: u64) -> String {
    format!("segment-{number:010}.jsonl")
}

/// The segment files in `dir`, in order: (number, path).
pub(crate) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // Exactly the names the writer gives: ten digits, no sign, no other spelling.
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|n| n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        // A symbolic link, a FIFO or a folder by that name is not a segment (reading a FIFO
        // would hang): the writer never makes one, so its absence shows as a gap.
        if !entry.file_type()?.is_file() {
            continue;
        }
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Creates `path` anew for writing: whatever is there (a file left by a crash, or a symbolic
/// link planted to make the gateway write elsewhere) is removed first, and the file is created
/// exclusively, so a link put there in between is not followed either.
pub(crate) fn create_fresh(path: &Path) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Opens the spool's lock file, making it when it is missing, or is not a plain file (a
/// symbolic link or a FIFO someone put there).
pub(super) fn open_lock(path: &Path) -> std::io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => OpenOptions::new().write(true).open(path),
        Ok(_) | Err(_) => create_fresh(path),
    }
}

/// The longest line a spool holds (an AuditEvent is a few KiB).
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// Reads one line (with its newline, if it has one) into `line`, at most [`MAX_LINE`] bytes: a
/// longer one is not a spool line.
pub(crate) fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    let read = reader.take(MAX_LINE).read_until(b'\n', line)?;
    if read as u64 == MAX_LINE && !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a line longer than 16 MiB",
        ));
    }
    Ok(read)
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for byte in digest.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// What [`scan_tail`] found at the end of a segment.
pub(super) struct Tail {
    pub(super) next_seq: u64,
    pub(super) head: String,
    /// The length of its complete, well-formed lines.
    pub(super) good_len: u64,
    /// The kind of the last record, when it is a seal.
    pub(super) last_seal: Option<SealKind>,
    /// The chain's id: from the header, or else from a seal.
    pub(super) chain: Option<String>,
}

/// Reads a segment: the next sequence number, the chain head, and the length of its complete,
/// well-formed lines (what follows, a line without its newline, was never acknowledged).
pub(super) fn scan_tail(path: &Path) -> Result<Tail, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let read = read_line(&mut reader, &mut line).map_err(|e| e.to_string())?;
    if read == 0 || !line.ends_with(b"\n") {
        return Err(format!("{}: no segment header", path.display()));
    }
    let header: SegmentHeader = serde_json::from_slice(&line[..line.len() - 1])
        .map_err(|e| format!("{}: bad segment header: {e}", path.display()))?;
    let mut tail = Tail {
        next_seq: header.first_seq,
        head: header.head,
        good_len: read as u64,
        last_seal: None,
        chain: header.chain,
    };
    loop {
        let read = read_line(&mut reader, &mut line).map_err(|e| e.to_string())?;
        if read == 0 || !line.ends_with(b"\n") {
            break;
        }
        let body = &line[..line.len() - 1];
        let record = RecordLine::parse(body).map_err(|e| {
            format!(
                "{}: record {} is not readable ({e}); run `portvagt audit verify`",
                path.display(),
                tail.next_seq
            )
        })?;
        if record.seq != tail.next_seq || record.prev != tail.head {
            return Err(format!(
                "{}: the chain breaks at record {}; run `portvagt audit verify`",
                path.display(),
                tail.next_seq
            ));
        }
        let seal = record.seal.and_then(Seal::peek);
        if let Some(seal) = &seal
            && tail.chain.is_none()
            && !seal.chain.is_empty()
        {
            tail.chain = Some(seal.chain.clone());
        }
        tail.last_seal = seal.map(|seal| seal.kind);
        tail.head = sha256_hex(body);
        tail.next_seq += 1;
        tail.good_len += read as u64;
    }
    Ok(tail)
}
