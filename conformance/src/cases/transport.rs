//! Transport: mutual TLS is required, with certificates from the deployment's CA only.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{case, check, expect_status};
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "TLS-01",
            "the configured client certificate gets through",
            "Portvagt: mutual TLS with the OCES3 client certificate (RFC 8446, RFC 8705 §2)",
            [],
            accepted
        ),
        case!(
            "TLS-02",
            "a connection without a client certificate is refused",
            "Portvagt: every connection presents a client certificate (RFC 8446 §4.4.2)",
            [],
            no_certificate
        ),
        case!(
            "TLS-03",
            "a client certificate from an untrusted CA is refused",
            "Portvagt: client certificates chain to the configured CA (RFC 5280 §6)",
            [ForeignCertificate],
            foreign_certificate
        ),
        case!(
            "TLS-04",
            "plain HTTP on the TLS port gets no FHIR answer",
            "Portvagt: FHIR only over TLS",
            [],
            plain_http
        ),
        case!(
            "TLS-05",
            "a TLS 1.3 client is served",
            "RFC 8446: TLS 1.3",
            [],
            tls13
        ),
        case!(
            "TLS-06",
            "a TLS 1.2 client is served (with the same certificate checks)",
            "RFC 5246 with RFC 7525 recommendations: TLS 1.2 still accepted",
            [],
            tls12
        ),
    ]
}

async fn with_version(ctx: &Ctx, version: &'static rustls::SupportedProtocolVersion) -> Verdict {
    let (host, port) = ctx.address();
    let client = match crate::client::Client::with_versions(
        host,
        port,
        &ctx.settings.ca_pem,
        Some(&ctx.settings.identity),
        &[version],
    ) {
        Ok(client) => client,
        Err(error) => return Verdict::Fail(error.to_string()),
    };
    expect_status(
        &client
            .send(
                http::Method::GET,
                &ctx.path(".well-known/smart-configuration"),
                &[],
                None,
            )
            .await,
        200,
    )
}

async fn tls13(ctx: &Ctx) -> Verdict {
    with_version(ctx, &rustls::version::TLS13).await
}

async fn tls12(ctx: &Ctx) -> Verdict {
    with_version(ctx, &rustls::version::TLS12).await
}

async fn accepted(ctx: &Ctx) -> Verdict {
    // The SMART configuration needs no token: only the certificate is being tried here.
    expect_status(&ctx.get(".well-known/smart-configuration", None).await, 200)
}

async fn no_certificate(ctx: &Ctx) -> Verdict {
    match ctx
        .anonymous
        .send(http::Method::GET, &ctx.path("metadata"), &[], None)
        .await
    {
        Err(_) => Verdict::Pass,
        Ok(answer) => Verdict::Fail(format!(
            "the handshake succeeded without a certificate and got {}",
            answer.status
        )),
    }
}

async fn foreign_certificate(ctx: &Ctx) -> Verdict {
    let Some(foreign) = &ctx.foreign else {
        return Verdict::Skip("no foreign certificate".into());
    };
    match foreign
        .send(http::Method::GET, &ctx.path("metadata"), &[], None)
        .await
    {
        Err(_) => Verdict::Pass,
        Ok(answer) => Verdict::Fail(format!(
            "a certificate from another CA got {}",
            answer.status
        )),
    }
}

async fn plain_http(ctx: &Ctx) -> Verdict {
    let (host, port) = ctx.address();
    let Ok(mut stream) = tokio::net::TcpStream::connect((host, port)).await else {
        return Verdict::Fail("cannot connect".into());
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {host}\r\n\r\n",
        ctx.path("metadata")
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buffer = vec![0u8; 64];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer)).await;
    let answered = match read {
        Ok(Ok(n)) => buffer[..n].starts_with(b"HTTP/1.1 2"),
        _ => false,
    };
    check(
        !answered,
        "a plain-HTTP request got a successful HTTP answer",
    )
}
