//! Protocol abuse against the running gateway: request smuggling, odd framing, oversized and
//! slow requests, odd targets, old TLS, HTTP/2 floods. Each case has one expected outcome (the
//! README's "Protocol abuse" table); none may crash the gateway, hang a connection, or reach
//! the backend as something other than the one request the gateway understood.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Client, Gateway, Options, RawAnswer};

const WAIT: Duration = Duration::from_secs(5);

/// A gateway with short header and request timeouts and small limits.
fn gateway() -> Gateway {
    Gateway::start_with(Options {
        server_extra: "header_read_timeout = \"1s\"".into(),
        extra_config:
            "[limits]\nmax_body_bytes = 4096\nmax_header_bytes = 8192\nrequest_timeout = \"3s\"\n"
                .into(),
        ..Default::default()
    })
}

fn host(gateway: &Gateway) -> String {
    format!("localhost:{}", gateway.addr.port())
}

async fn raw(gateway: &Gateway, bytes: &str) -> RawAnswer {
    gateway
        .client()
        .raw(bytes.as_bytes(), WAIT)
        .await
        .expect("connection")
}

/// The gateway still answers a normal request (it did not crash or wedge).
async fn still_serves(gateway: &Gateway) {
    let token = gateway.token(json!({}));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn smuggling_shapes_and_bad_framing_get_one_400_and_a_closed_connection() {
    let gateway = gateway();
    let token = gateway.token(json!({}));
    let h = host(&gateway);
    let smuggled = format!(
        "GET /fhir/Patient/pat-anne HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let cases = [
        // CL.TE: a front that trusts Content-Length and a back that trusts chunked disagree on
        // where the request ends; the "body" carries a second request. Read by
        // Transfer-Encoding alone (an empty body here: 400), the connection closed after the
        // answer, the rest never read as a request.
        (
            "CL.TE",
            format!(
                "POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("malformed-body"),
        ),
        // TE.CL: the same, the other way round; the chunk sizes do not fit what follows, and
        // broken chunked framing is the client's fault: 400, not 500.
        (
            "TE.CL",
            format!(
                "POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n"
            ),
            Some("malformed-request-body"),
        ),
        (
            "obfuscated Transfer-Encoding",
            format!(
                "POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            None,
        ),
        (
            "chunked not last",
            format!(
                "POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            None,
        ),
        (
            "duplicate Content-Length",
            format!(
                "POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}{smuggled}"
            ),
            None,
        ),
        (
            "obs-fold",
            format!(
                "GET /fhir/Patient/pat-anne HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nX-Folded: a\r\n b\r\n\r\n{smuggled}"
            ),
            None,
        ),
        (
            "raw NUL in the target",
            format!(
                "GET /fhir/Patient/pat\0anne HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n{smuggled}"
            ),
            None,
        ),
        (
            "no Host",
            format!(
                "GET /fhir/Patient/pat-anne HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n{smuggled}"
            ),
            Some("bad-host"),
        ),
        (
            "two Hosts",
            format!(
                "GET /fhir/Patient/pat-anne HTTP/1.1\r\nHost: {h}\r\nHost: evil.example\r\nAuthorization: Bearer {token}\r\n\r\n{smuggled}"
            ),
            Some("bad-host"),
        ),
        (
            "absolute form",
            format!(
                "GET https://evil.example/fhir/Patient/pat-anne HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n{smuggled}"
            ),
            Some("absolute-form"),
        ),
    ];
    for (name, bytes, code) in cases {
        let answer = raw(&gateway, &bytes).await;
        assert_eq!(answer.statuses(), vec![400], "{name}: {}", answer.text);
        assert!(answer.closed, "{name}: the connection must be closed");
        if let Some(code) = code {
            assert!(answer.text.contains(code), "{name}: {}", answer.text);
            assert!(answer.text.contains("OperationOutcome"), "{name}");
        }
    }
    still_serves(&gateway).await;
}

#[tokio::test]
async fn odd_targets_and_methods_get_their_answers() {
    let gateway = gateway();
    let token = gateway.token(json!({}));
    let h = host(&gateway);
    let cases = [
        (
            "CONNECT",
            format!(
                "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            405,
            "method-not-allowed",
        ),
        (
            "TRACE",
            format!(
                "TRACE /fhir/Patient HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            405,
            "method-not-allowed",
        ),
        (
            "percent-encoded NUL",
            format!(
                "GET /fhir/Patient/pat%00anne HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            400,
            "bad-encoding",
        ),
        (
            "non-UTF-8",
            format!(
                "GET /fhir/Patient/pat%FFanne HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            400,
            "bad-encoding",
        ),
        (
            "dot segments",
            format!(
                "GET /fhir/../metrics HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            400,
            "path-dot-segment",
        ),
        (
            "declared body over the limit",
            format!(
                "POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n{{"
            ),
            413,
            "body-too-large",
        ),
    ];
    for (name, bytes, status, code) in cases {
        let answer = raw(&gateway, &bytes).await;
        assert_eq!(answer.statuses(), vec![status], "{name}: {}", answer.text);
        assert!(answer.text.contains(code), "{name}: {}", answer.text);
    }
    // Header block over the limit: hyper's 431 (no body), connection closed.
    let big = raw(
        &gateway,
        &format!(
            "GET /fhir/Patient/pat-anne HTTP/1.1\r\nHost: {h}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        ),
    )
    .await;
    assert_eq!(big.statuses(), vec![431], "{}", big.text);
    assert!(big.closed);
    // Bare LF line ends (RFC 9112 §2.2 lets a server accept them): one request, answered,
    // and re-framed with CRLF towards the backend.
    let lf = raw(
        &gateway,
        &format!(
            "GET /fhir/Patient/pat-anne HTTP/1.1\nHost: {h}\nAuthorization: Bearer {token}\n\n"
        ),
    )
    .await;
    assert_eq!(lf.statuses(), vec![200], "{}", lf.text);
    still_serves(&gateway).await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_do_not_hold_up_others() {
    let gateway = gateway();
    let token = gateway.token(json!({}));
    let h = host(&gateway);
    let client = gateway.client();
    // Slowloris: a header block begun and never finished. header_read_timeout is 1 s.
    let started = Instant::now();
    let mut slowloris = Vec::new();
    for _ in 0..20 {
        let mut tls = client.raw_connect().await.unwrap();
        tls.write_all(
            format!("GET /fhir/Patient/pat-anne HTTP/1.1\r\nHost: {h}\r\nX-A: ").as_bytes(),
        )
        .await
        .unwrap();
        tls.flush().await.unwrap();
        slowloris.push(tls);
    }
    // Others are served meanwhile.
    still_serves(&gateway).await;
    for mut tls in slowloris {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "a slowloris connection was still open after {WAIT:?}"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );

    // A body promised and never sent: the request times out (request_timeout 3 s) with a 504,
    // and the connection is let go.
    let answer = client
        .raw(
            format!("POST /fhir/Observation HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{{\"resourceType\"")
                .as_bytes(),
            Duration::from_secs(8),
        )
        .await
        .unwrap();
    assert!(
        answer.closed,
        "the connection was still open: {}",
        answer.text
    );
    assert_eq!(answer.statuses(), vec![504], "{}", answer.text);
    assert!(answer.text.contains("request-timeout"), "{}", answer.text);
    still_serves(&gateway).await;
}

/// `openssl s_client` offering only `version` (TLS 1.0 or 1.1, which rustls does not speak).
fn old_tls_handshake(gateway: &Gateway, version: &str) -> (bool, String) {
    let pki = gateway.dir.path().join("pki");
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &gateway.addr.to_string(), version])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
        .arg("-CAfile")
        .arg(pki.join("ca.crt"))
        .arg("-cert")
        .arg(pki.join("client.crt"))
        .arg("-key")
        .arg(pki.join("client.key"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)"),
        text,
    )
}

#[tokio::test]
async fn old_tls_versions_are_refused() {
    let gateway = gateway();
    for version in ["-tls1", "-tls1_1"] {
        let (established, text) = old_tls_handshake(&gateway, version);
        assert!(!established, "{version} was accepted: {text}");
        assert!(
            text.contains("protocol version")
                || text.contains("wrong version")
                || text.contains("alert"),
            "{version}: refused, but not for its version: {text}"
        );
    }
    // The same command with TLS 1.2 gets through, so the refusals above are the version's.
    let (established, text) = old_tls_handshake(&gateway, "-tls1_2");
    assert!(established, "TLS 1.2: {text}");
    still_serves(&gateway).await;
}

#[tokio::test]
async fn tls_renegotiation_is_refused() {
    // A TLS 1.2 client asks to renegotiate (`R` on s_client's input) after the handshake.
    let gateway = gateway();
    let pki = gateway.dir.path().join("pki");
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &gateway.addr.to_string(), "-tls1_2"])
        .args(["-servername", "localhost"])
        .arg("-CAfile")
        .arg(pki.join("ca.crt"))
        .arg("-cert")
        .arg(pki.join("client.crt"))
        .arg("-key")
        .arg(pki.join("client.key"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    {
        use std::io::Write as _;
        stdin.write_all(b"R\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(2000));
    // s_client waits on for a ServerHello that never comes: what it printed by now is the answer.
    let _ = child.kill();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, after) = text
        .split_once("RENEGOTIATING")
        .unwrap_or_else(|| panic!("no renegotiation was asked: {text}"));
    // rustls answers a renegotiating ClientHello with a no_renegotiation alert: no second
    // handshake ever completes (s_client would verify the chain again and print the session).
    assert!(
        !after.contains("verify return") && !after.contains("New, TLS"),
        "a renegotiation completed: {text}"
    );
    still_serves(&gateway).await;
}

// --- HTTP/2, frame by frame ---------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix, the prefix's other bits `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | u8::try_from(value).unwrap());
        return;
    }
    out.push(flags | u8::try_from(max).unwrap());
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).unwrap() | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).unwrap());
}

/// A literal header field (without indexing) whose name is static-table entry `index`.
fn hpack_literal(out: &mut Vec<u8>, index: usize, value: &str) {
    hpack_int(out, 0x00, 4, index);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a request: `:method` (static 2 GET, 3 POST), `:scheme https`, a path,
/// `:authority`, and optionally a bearer token.
fn request_block(post: bool, path: &str, authority: &str, token: Option<&str>) -> Vec<u8> {
    let mut block = vec![if post { 0x83 } else { 0x82 }, 0x87];
    hpack_literal(&mut block, 4, path);
    hpack_literal(&mut block, 1, authority);
    if let Some(token) = token {
        hpack_literal(&mut block, 23, &format!("Bearer {token}"));
        hpack_literal(&mut block, 31, "application/fhir+json");
    }
    block
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

/// Frames read from the server until it closes or `wait` passes: (type, stream, error code
/// for RST_STREAM and GOAWAY).
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> (Vec<(u8, u32, Option<u32>)>, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
        }
        while buffer.len() >= 9 {
            let len =
                usize::from(buffer[0]) << 16 | usize::from(buffer[1]) << 8 | usize::from(buffer[2]);
            if buffer.len() < 9 + len {
                break;
            }
            let kind = buffer[3];
            let id = u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff;
            let payload = &buffer[9..9 + len];
            let code = match kind {
                RST_STREAM if len >= 4 => {
                    Some(u32::from_be_bytes(payload[..4].try_into().unwrap()))
                }
                GOAWAY if len >= 8 => Some(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                _ => None,
            };
            frames.push((kind, id, code));
            buffer.drain(..9 + len);
        }
    };
    (frames, closed)
}

fn h2_client(gateway: &Gateway) -> Client {
    gateway.client().http2()
}

#[tokio::test]
async fn http2_rapid_reset_is_stopped_with_goaway() {
    let gateway = gateway();
    let mut tls = h2_client(&gateway).raw_connect().await.unwrap();
    let authority = host(&gateway);
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(SETTINGS, 0, 0, &[]));
    let block = request_block(false, "/fhir/metadata", &authority, None);
    // CVE-2023-44487: open a stream and cancel it at once, thousands of times.
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    // The server may stop reading part way: what it refuses to read is the point.
    let _ = tokio::time::timeout(WAIT, tls.write_all(&burst)).await;
    let (frames, closed) = read_frames(&mut tls, WAIT).await;
    let goaway = frames.iter().find(|(kind, _, _)| *kind == GOAWAY);
    assert_eq!(
        goaway.map(|(_, _, code)| *code),
        Some(Some(ENHANCE_YOUR_CALM)),
        "no GOAWAY ENHANCE_YOUR_CALM; closed {closed}, {} frames",
        frames.len()
    );
    still_serves(&gateway).await;
}

#[tokio::test]
async fn http2_settings_flood_and_too_many_streams_are_bounded() {
    let gateway = gateway();
    let authority = host(&gateway);
    // SETTINGS flood: 20,000 SETTINGS frames, never reading the ACKs. The server stops reading
    // until it can write its ACK, so the flood cannot grow its memory.
    let mut flood = h2_client(&gateway).raw_connect().await.unwrap();
    let mut burst = PREFACE.to_vec();
    for _ in 0..20_000 {
        burst.extend(frame(SETTINGS, 0, 0, &[]));
    }
    let _ = tokio::time::timeout(WAIT, flood.write_all(&burst)).await;
    still_serves(&gateway).await;
    let rss_kib = gateway.rss_kib();
    assert!(
        rss_kib < 256 * 1024,
        "RSS {rss_kib} KiB after a SETTINGS flood"
    );
    drop(flood);

    // Streams beyond the advertised 256 at once are refused: 300 uploads begun and not finished.
    let token = gateway.token(json!({}));
    let mut tls = h2_client(&gateway).raw_connect().await.unwrap();
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&start).await.unwrap();
    // The server's SETTINGS first (it counts the limit from when they are acknowledged).
    let (frames, _) = read_frames(&mut tls, Duration::from_millis(500)).await;
    assert!(frames.iter().any(|(kind, _, _)| *kind == SETTINGS));
    let mut burst = frame(SETTINGS, 0x1, 0, &[]);
    let block = request_block(true, "/fhir/Observation", &authority, Some(&token));
    for i in 0..300u32 {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    tls.write_all(&burst).await.unwrap();
    let (frames, _) = read_frames(&mut tls, Duration::from_secs(2)).await;
    let refused = frames
        .iter()
        .filter(|(kind, _, code)| *kind == RST_STREAM && *code == Some(REFUSED_STREAM))
        .count();
    assert!(
        refused >= 300 - 256,
        "{refused} streams refused; frames: {:?}",
        &frames[..frames.len().min(20)]
    );
    drop(tls);
    still_serves(&gateway).await;
}
