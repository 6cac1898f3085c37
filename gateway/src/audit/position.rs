//! How far the audit repository has acknowledged the spool: `shipped.json` beside the
//! segments, replaced atomically. It is on the spool's volume, so the shipper does not take
//! it on trust ([`super::reading::position_holds`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How far the repository has acknowledged: the next byte to read, in which segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The segment number.
    pub segment: u64,
    /// The byte offset of the next unshipped line in it.
    pub offset: u64,
    /// The sequence number of the last record shipped (0: none yet).
    pub seq: u64,
    /// The hash of that record (absent: not known yet; the next one read is not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The hash (the repository's id) of the last event shipped: at start the repository must
    /// hold it, or the position was altered (or the repository lost what it acknowledged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<String>,
}

const POSITION_FILE: &str = "shipped.json";

/// Reads the acknowledged position of the spool in `dir` (the start, if nothing was shipped).
pub fn position(dir: &Path) -> Position {
    std::fs::read(dir.join(POSITION_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub(crate) fn save_position(dir: &Path, position: Position) -> std::io::Result<()> {
    let temporary = dir.join(format!("{POSITION_FILE}.tmp"));
    let bytes = serde_json::to_vec(&position).map_err(std::io::Error::other)?;
    {
        let mut file = super::spool::create_fresh(&temporary)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, dir.join(POSITION_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}
