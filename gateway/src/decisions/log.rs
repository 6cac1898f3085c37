//! The decision log's file: JSON lines written by a thread of its own, so a request never waits
//! on the disk, and rotated by size the way logrotate's `size` + `rotate N` would: when a line
//! would take the file past `max_bytes`, `<path>.N-1` becomes `<path>.N`, ..., the file becomes
//! `<path>.1`, and a new file is started. A record the writer cannot take (it is `QUEUE` lines
//! or `QUEUE_BYTES` behind) or cannot write is counted in `portvagt_decision_log_dropped_total`,
//! never waited for. A rotation that fails (a file moved away by hand, a full disk) leaves the
//! lines in the current file rather than losing them. The file is the gateway's alone: made
//! with mode 0600, and never a symbolic link or anything but a plain file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use crate::config::DecisionLogConfig;
use crate::metrics::Metrics;

/// How many records may wait for the writer.
const QUEUE: usize = 16 * 1024;
/// How many bytes of records may wait for the writer.
const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Sends records to the writer thread.
#[derive(Debug)]
pub(crate) struct LogWriter {
    sender: SyncSender<String>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl LogWriter {
    /// Opens (appends to) the file and starts the writer.
    pub(crate) fn start(
        config: &DecisionLogConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<LogWriter> {
        let file = RotatingFile::open(&config.path, config.max_bytes, config.keep)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let (dropped, written) = (metrics.clone(), queued.clone());
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_all(receiver, file, &written, &dropped))?;
        Ok(LogWriter {
            sender,
            queued,
            metrics,
        })
    }

    /// Queues one record (a JSON object without its newline).
    pub(crate) fn write(&self, line: String) {
        let length = line.len();
        if self.queued.fetch_add(length, Ordering::Relaxed) + length > QUEUE_BYTES {
            self.queued.fetch_sub(length, Ordering::Relaxed);
            self.metrics.decision_log_dropped.inc();
            return;
        }
        match self.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(length, Ordering::Relaxed);
                self.metrics.decision_log_dropped.inc();
            }
        }
    }
}

/// The writer thread: lines as they come, flushed whenever none is waiting.
fn write_all(
    receiver: Receiver<String>,
    mut file: RotatingFile,
    queued: &AtomicUsize,
    metrics: &Metrics,
) {
    let mut failing = false;
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(line) = next.take() {
            queued.fetch_sub(line.len(), Ordering::Relaxed);
            match file.append(&line) {
                Ok(()) => failing = false,
                Err(error) => {
                    metrics.decision_log_dropped.inc();
                    if !failing {
                        tracing::error!(%error, "decision log: a record could not be written");
                    }
                    failing = true;
                }
            }
            next = receiver.try_recv().ok();
        }
        if let Err(error) = file.flush() {
            metrics.decision_log_dropped.inc();
            tracing::error!(%error, "decision log: flushing failed");
        }
    }
    let _ = file.flush();
}

/// A file of lines, rotated by size.
#[derive(Debug)]
pub(crate) struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    pub(crate) fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<RotatingFile> {
        let file = open_plain(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_bytes,
            keep,
            file: BufWriter::new(file),
            size,
        })
    }

    /// Appends `line` and a newline, rotating first if it would not fit (and, when rotating
    /// fails, appending all the same: the next try is a file's size later).
    pub(crate) fn append(&mut self, line: &str) -> std::io::Result<()> {
        let length = line.len() as u64 + 1;
        if self.size > 0
            && self.size + length > self.max_bytes
            && let Err(error) = self.rotate()
        {
            tracing::error!(%error, "decision log: rotating failed; writing on in the same file");
            self.size = 0;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += length;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        // A file moved or deleted by hand is no reason to stop: what is missing is not moved.
        let gone = |result: std::io::Result<()>| match result {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
        if self.keep == 0 {
            gone(std::fs::remove_file(&self.path))?;
        } else {
            for n in (1..self.keep).rev() {
                gone(std::fs::rename(numbered(n), numbered(n + 1)))?;
            }
            gone(std::fs::rename(&self.path, numbered(1)))?;
        }
        self.file = BufWriter::new(open_plain(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

/// Opens `path` to append, made with mode 0600 if missing; refused if it is anything but a
/// plain file (a symbolic link planted there, a FIFO).
fn open_plain(path: &Path) -> std::io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a plain file (a symbolic link?)",
            ));
        }
        _ => {}
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_full_file_rotates_and_only_keep_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        // Each line is 10 bytes with its newline; 25 bytes hold two.
        let mut file = RotatingFile::open(&path, 25, 2).unwrap();
        for n in 0..7 {
            file.append(&format!("record-{n:02}")[..9]).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(lines(&path), ["record-06"]);
        assert_eq!(
            lines(&dir.path().join("decisions.jsonl.1")),
            ["record-04", "record-05"]
        );
        assert_eq!(
            lines(&dir.path().join("decisions.jsonl.2")),
            ["record-02", "record-03"]
        );
        assert!(!dir.path().join("decisions.jsonl.3").exists());
    }

    #[test]
    fn a_line_longer_than_the_limit_is_written_alone_and_keep_zero_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let mut file = RotatingFile::open(&path, 5, 0).unwrap();
        file.append("a long line").unwrap();
        file.append("another long line").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(&path), ["another long line"]);
        assert!(!dir.path().join("decisions.jsonl.1").exists());
    }

    #[test]
    fn a_file_moved_away_by_hand_does_not_stop_the_log_and_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let mut file = RotatingFile::open(&path, 25, 2).unwrap();
        file.append("record-00").unwrap();
        file.append("record-01").unwrap();
        file.flush().unwrap();
        std::fs::rename(&path, dir.path().join("elsewhere")).unwrap();
        for n in 2..6 {
            file.append(&format!("record-{n:02}")).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(lines(&path), ["record-04", "record-05"]);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(dir.path().join("victim"), &link).unwrap();
        assert!(RotatingFile::open(&link, 25, 2).is_err());
        assert!(!dir.path().join("victim").exists());
    }

    #[test]
    fn a_reopened_file_counts_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        std::fs::write(&path, "123456789\n").unwrap();
        let mut file = RotatingFile::open(&path, 15, 1).unwrap();
        file.append("abcdefghi").unwrap();
        file.flush().unwrap();
        assert_eq!(lines(&path), ["abcdefghi"]);
        assert_eq!(lines(&dir.path().join("decisions.jsonl.1")), ["123456789"]);
    }

    #[test]
    fn the_writer_writes_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let config = DecisionLogConfig {
            path: dir.path().join("decisions.jsonl"),
            max_bytes: 1 << 20,
            keep: 1,
            decisions: crate::config::LoggedDecisions::All,
        };
        let metrics = Arc::new(Metrics::new());
        let writer = LogWriter::start(&config, metrics.clone()).unwrap();
        writer.write("{\"n\":1}".into());
        writer.write("{\"n\":2}".into());
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = lines(&config.path);
            if seen.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(seen, ["{\"n\":1}", "{\"n\":2}"]);
        assert_eq!(metrics.decision_log_dropped.get(), 0);
    }
}
