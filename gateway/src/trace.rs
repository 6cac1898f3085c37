//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` of a request, and the spans of its phases.
//!
//! A request's [`TraceContext`] is taken from the client's `traceparent` when the operator
//! trusts clients to start traces (`[tracing] trust_incoming`), otherwise started here; the
//! gateway's own span is the request's, and the backend gets a `traceparent` naming the
//! backend call's span (§3.2). Each phase of a request (authenticate, classify, decide,
//! consent, backend, audit) is a [`Phase`] that records a [`SpanRecord`] into the request's
//! [`Spans`] when it ends; the access log's layer hands them to the exporter
//! ([`crate::otlp`]) when the answer has gone.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` passed on (§3.3.1.1: 512 characters at least are kept by all).
const MAX_TRACESTATE: usize = 512;

/// A 16-byte trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random one (never all zeroes, which §3.2.2.3 makes invalid).
    pub fn random() -> TraceId {
        let mut id = [0u8; 16];
        random_bytes(&mut id);
        TraceId(id)
    }
    /// Lower-case hex, as in `traceparent`.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    /// A random one (never all zeroes).
    pub fn random() -> SpanId {
        let mut id = [0u8; 8];
        random_bytes(&mut id);
        SpanId(id)
    }
    /// Lower-case hex, as in `traceparent`.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// Fills `bytes` with random bytes, never all zeroes. Ids must be unique and unguessable
/// enough to be useless to forge (§3.2.2.3 asks for randomness, not secrecy): a per-thread
/// xoshiro256** generator, seeded once from the system's, costs a few nanoseconds a request
/// instead of a call into the system's generator.
fn random_bytes(bytes: &mut [u8]) {
    thread_local! {
        static STATE: std::cell::Cell<[u64; 4]> = std::cell::Cell::new(seed());
    }
    STATE.with(|cell| {
        let mut state = cell.get();
        for chunk in bytes.chunks_mut(8) {
            let next = xoshiro256(&mut state).to_le_bytes();
            chunk.copy_from_slice(&next[..chunk.len()]);
        }
        cell.set(state);
    });
    if bytes.iter().all(|b| *b == 0)
        && let Some(last) = bytes.last_mut()
    {
        *last = 1;
    }
}

fn seed() -> [u64; 4] {
    let mut bytes = [0u8; 32];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(&u128::from(now_nanos()).to_le_bytes());
    }
    let mut state = [0u64; 4];
    for (word, chunk) in state.iter_mut().zip(bytes.chunks(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap_or([1; 8]));
    }
    if state == [0; 4] {
        state[0] = 1;
    }
    state
}

/// xoshiro256** (Blackman and Vigna).
fn xoshiro256(state: &mut [u64; 4]) -> u64 {
    let result = state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
    let t = state[1] << 17;
    state[2] ^= state[0];
    state[3] ^= state[1];
    state[1] ^= state[2];
    state[0] ^= state[3];
    state[2] ^= t;
    state[3] = state[3].rotate_left(45);
    result
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// A request's place in a trace.
#[derive(Debug, Clone)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The gateway's span for this request.
    pub span_id: SpanId,
    /// The caller's span, when the trace came from a trusted client.
    pub parent: Option<SpanId>,
    /// Whether the trace is sampled (flag `01`).
    pub sampled: bool,
    /// The vendor state, passed on as received.
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// A new trace, sampled or not.
    pub fn start(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent: None,
            sampled,
            state: None,
        }
    }

    /// The context of a request: the client's, continued, when `trust` and its `traceparent`
    /// is well formed; else a new trace (`sample` says whether a new one is sampled).
    pub fn of(headers: &HeaderMap, trust: bool, sample: bool) -> TraceContext {
        if !trust {
            return TraceContext::start(sample);
        }
        let mut parents = headers.get_all(TRACEPARENT).iter();
        let (Some(value), None) = (parents.next(), parents.next()) else {
            // None, or several: §3.2 asks to start anew.
            return TraceContext::start(sample);
        };
        let Some((trace_id, parent, flags)) = value.to_str().ok().and_then(parse_traceparent)
        else {
            return TraceContext::start(sample);
        };
        TraceContext {
            trace_id,
            span_id: SpanId::random(),
            parent: Some(parent),
            sampled: flags & 1 == 1,
            state: tracestate(headers),
        }
    }

    /// The `traceparent` for a call made within this request, by the span `span`.
    pub fn traceparent(&self, span: SpanId) -> HeaderValue {
        let flags = if self.sampled { "01" } else { "00" };
        let text = format!("00-{}-{}-{flags}", self.trace_id.hex(), span.hex());
        HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
    }
}

/// `version-traceid-parentid-flags` (§3.2.2): version `00` exactly; a later version is read by
/// its first four fields, as §3.2.4 asks; ids lower-case hex and not all zeroes.
fn parse_traceparent(text: &str) -> Option<(TraceId, SpanId, u8)> {
    let text = text.trim_matches([' ', '\t']);
    let version = text.get(..2)?;
    let future = match version {
        "00" => false,
        "ff" => return None,
        other if is_lower_hex(other) => true,
        _ => return None,
    };
    if (!future && text.len() != 55) || (future && text.len() > 55 && text.as_bytes()[55] != b'-') {
        return None;
    }
    let fields: Vec<&str> = text.get(..55)?.split('-').collect();
    let [_, trace, parent, flags] = fields.as_slice() else {
        return None;
    };
    if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        return None;
    }
    if ![trace, parent, flags]
        .iter()
        .all(|field| is_lower_hex(field))
    {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    for (i, byte) in trace_id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(trace.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    for (i, byte) in span_id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(parent.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((TraceId(trace_id), SpanId(span_id), flags))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `tracestate` headers joined (§3.3.1.1), if short enough to pass on and printable.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let joined: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .map(|value| value.to_str().ok())
        .collect::<Option<_>>()?;
    let joined = joined.join(",");
    // §3.3.1: list-members `key=value`, at most 32, empty ones allowed and dropped; the key
    // lower-case letters, digits and `_-*/@`, the value printable ASCII without `,` and `=`.
    let members: Vec<&str> = joined
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .filter(|member| !member.is_empty())
        .collect();
    let well_formed = |member: &&str| {
        member.split_once('=').is_some_and(|(key, value)| {
            (1..=256).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b))
                && (1..=256).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b',' && b != b'=')
                && !value.ends_with(' ')
        })
    };
    if members.is_empty() || members.len() > 32 || !members.iter().all(well_formed) {
        return None;
    }
    let joined = members.join(",");
    if joined.len() > MAX_TRACESTATE {
        return None;
    }
    HeaderValue::try_from(joined).ok()
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The span.
    pub span_id: SpanId,
    /// Its parent (the request's span, for a phase).
    pub parent: Option<SpanId>,
    /// `portvagt.authenticate`, `portvagt.backend`, ...
    pub name: &'static str,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    /// Nanoseconds since the Unix epoch.
    pub end: u64,
    /// Whether the phase failed (a refusal, an error).
    pub error: bool,
}

/// The spans of one request, gathered as its phases end (nothing at all, not even an
/// allocation, for a request not recorded).
#[derive(Debug, Clone)]
pub struct Spans(Option<Arc<Mutex<Vec<SpanRecord>>>>);

impl Default for Spans {
    fn default() -> Self {
        Spans(Some(Arc::default()))
    }
}

impl Spans {
    /// Spans that keep nothing.
    pub fn none() -> Spans {
        Spans(None)
    }

    /// Adds a finished span.
    pub fn push(&self, span: SpanRecord) {
        if let Some(spans) = &self.0 {
            spans.lock().unwrap_or_else(|p| p.into_inner()).push(span);
        }
    }

    /// Takes every span gathered so far.
    pub fn take(&self) -> Vec<SpanRecord> {
        match &self.0 {
            Some(spans) => std::mem::take(&mut *spans.lock().unwrap_or_else(|p| p.into_inner())),
            None => Vec::new(),
        }
    }
}

/// What a request carries: its context, and where its phases go when they are exported.
#[derive(Debug, Clone)]
pub struct Traced {
    /// The request's context.
    pub context: TraceContext,
    /// Its phases, as they end.
    pub spans: Spans,
    /// Whether spans are recorded (sampled, and an exporter configured).
    pub recording: bool,
}

tokio::task_local! {
    /// The trace of the request the current task forwards, for the gateway's own reads on its
    /// behalf (Consents, a write's target), which are made far from the request's extensions.
    static CURRENT: Traced;
}

/// Runs `work` with `traced` as the current request's trace (see [`current`]).
pub async fn within<F: std::future::Future>(traced: Option<Traced>, work: F) -> F::Output {
    match traced {
        Some(traced) => CURRENT.scope(traced, work).await,
        None => work.await,
    }
}

/// The trace of the request being forwarded, if any.
pub fn current() -> Option<Traced> {
    CURRENT.try_with(Traced::clone).ok()
}

/// Marks a request to a backend as one of the gateway's own reads for a client's request.
#[derive(Debug, Clone, Copy)]
pub struct Lookup;

/// A phase under way; recorded when [`Phase::end`] is called (or when dropped, as failed: a
/// phase that never ended normally was cut short).
#[derive(Debug)]
pub struct Phase {
    traced: Option<Traced>,
    span_id: SpanId,
    name: &'static str,
    start: u64,
}

impl Phase {
    /// Starts `name` for the request whose extensions hold `traced` (if the request is not
    /// exported, nothing is recorded, and starting costs nothing).
    pub fn start(traced: Option<&Traced>, name: &'static str) -> Phase {
        let traced = traced.filter(|t| t.recording).cloned();
        let (span_id, start) = match traced {
            Some(_) => (SpanId::random(), now_nanos()),
            None => (SpanId([0; 8]), 0),
        };
        Phase {
            traced,
            span_id,
            name,
            start,
        }
    }

    /// This phase's span id (the `traceparent` of a call it makes names it); a fresh one for
    /// a phase not recorded.
    pub fn span_id(&self) -> SpanId {
        if self.traced.is_some() {
            self.span_id
        } else {
            SpanId::random()
        }
    }

    /// Ends the phase; `error` if it failed.
    pub fn end(mut self, error: bool) {
        self.record(error);
    }

    fn record(&mut self, error: bool) {
        if let Some(traced) = self.traced.take() {
            traced.spans.push(SpanRecord {
                span_id: self.span_id,
                parent: Some(traced.context.span_id),
                name: self.name,
                start: self.start,
                end: now_nanos(),
                error,
            });
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.record(true);
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_trusted_traceparent_is_continued_with_its_state() {
        let context = TraceContext::of(
            &headers(&[(TRACEPARENT, GOOD), (TRACESTATE, "congo=t61rcWkgMzE")]),
            true,
            false,
        );
        assert_eq!(context.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent.unwrap().hex(), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.state.as_ref().unwrap(), "congo=t61rcWkgMzE");
        let outgoing = context.traceparent(context.span_id);
        assert!(
            outgoing
                .to_str()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(outgoing.to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn an_untrusted_or_malformed_traceparent_starts_a_new_trace() {
        let given = "4bf92f3577b34da6a3ce929d0e0e4736";
        let untrusted = TraceContext::of(&headers(&[(TRACEPARENT, GOOD)]), false, true);
        assert_ne!(untrusted.trace_id.hex(), given);
        assert!(untrusted.parent.is_none());
        assert!(untrusted.sampled);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            let context = TraceContext::of(&headers(&[(TRACEPARENT, bad)]), true, false);
            assert_ne!(context.trace_id.hex(), given, "{bad}");
            assert!(context.parent.is_none(), "{bad}");
        }
        // Two traceparent headers: neither is believed.
        let two = TraceContext::of(
            &headers(&[(TRACEPARENT, GOOD), (TRACEPARENT, GOOD)]),
            true,
            false,
        );
        assert!(two.parent.is_none());
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let context = TraceContext::of(&headers(&[(TRACEPARENT, future)]), true, true);
        assert_eq!(context.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!context.sampled, "the caller's flag decides");
    }

    #[test]
    fn a_tracestate_is_passed_on_only_well_formed() {
        let state = |value: &str| {
            TraceContext::of(
                &headers(&[(TRACEPARENT, GOOD), (TRACESTATE, value)]),
                true,
                true,
            )
            .state
            .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(state("a=1, ,b@x=2").as_deref(), Some("a=1,b@x=2"));
        assert_eq!(state("Upper=1"), None);
        assert_eq!(state("a=1=2"), None);
        assert_eq!(state("novalue"), None);
        assert_eq!(state("   "), None);
        let many: Vec<String> = (0..33).map(|n| format!("k{n}=v")).collect();
        assert_eq!(state(&many.join(",")), None);
    }

    #[test]
    fn ids_are_lower_hex_and_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| TraceId::random().hex()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = SpanId::random().hex();
        assert_eq!(id.len(), 16);
        assert!(is_lower_hex(&id));
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }

    #[test]
    fn an_oversized_tracestate_is_not_passed_on() {
        let long = "a=".to_owned() + &"b".repeat(600);
        let context = TraceContext::of(
            &headers(&[(TRACEPARENT, GOOD), (TRACESTATE, &long)]),
            true,
            true,
        );
        assert!(context.state.is_none());
    }

    #[test]
    fn a_phase_records_under_the_request_span_only_when_recording() {
        let traced = Traced {
            context: TraceContext::start(true),
            spans: Spans::default(),
            recording: true,
        };
        Phase::start(Some(&traced), "portvagt.classify").end(false);
        drop(Phase::start(Some(&traced), "portvagt.decide"));
        let spans = traced.spans.take();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "portvagt.classify");
        assert!(!spans[0].error);
        assert!(spans[1].error, "a phase dropped unfinished failed");
        assert_eq!(spans[0].parent, Some(traced.context.span_id));
        assert!(spans[0].end >= spans[0].start);

        let unsampled = Traced {
            context: TraceContext::start(false),
            spans: Spans::default(),
            recording: false,
        };
        Phase::start(Some(&unsampled), "portvagt.classify").end(false);
        assert!(unsampled.spans.take().is_empty());
    }
}
