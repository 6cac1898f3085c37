//! Portvagt's fuzz targets. The checks live in `targets.rs`, shared with the regression test
//! that replays the committed corpora and every input that once crashed
//! (`gateway/tests/fuzz_regressions.rs`), so CI keeps them from coming back.

include!("targets.rs");
