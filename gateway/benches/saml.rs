//! Benchmarks of SAML assertion verification, the work behind every `POST /token`: parse (DTDs
//! refused), exclusive c14n of the assertion and of SignedInfo, digest, RSA-2048 signature
//! check against the trusted STS certificate, and reading the card. Replay and token signing
//! are not included (an in-memory insert and one ES256 signature).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portvagt::auth::saml::{AssertionPolicy, TrustedSigner};
use portvagt::tls::PeerIdentity;
use portvagt_certs::DevPki;
use portvagt_certs::saml::{OiosamlAssertion, SignatureAlgorithm, SosiCard};

const TOKEN_ENDPOINT: &str = "https://portvagt.bench/token";
const ISSUERS: [&str; 2] = ["TEST1-NSP-STS", "http://sts.sundhedsdatastyrelsen.dk/"];

fn verify_assertions(c: &mut Criterion) {
    let pki = DevPki::generate().expect("pki");
    let policy = AssertionPolicy {
        signers: TrustedSigner::load_pem(pki.sts.cert_pem.as_bytes(), &ISSUERS.map(str::to_owned))
            .expect("sts"),
        allow_sha1: true,
        audiences: vec!["https://portvagt.bench".into()],
        min_authentication_level: 3,
        leeway: 60,
        max_lifetime: 24 * 3600,
        max_bytes: 64 * 1024,
        token_endpoint: TOKEN_ENDPOINT.into(),
    };
    let peer = PeerIdentity::from_verified_leaf(&pki.client.cert_der).expect("peer");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let user = SosiCard::user(&pki.client.cert_der)
        .sign(&pki.sts)
        .expect("card");
    let mut legacy = SosiCard::system(&pki.client.cert_der);
    legacy.algorithm = SignatureAlgorithm::RsaSha1;
    let legacy = legacy.sign(&pki.sts).expect("card");
    let oiosaml =
        OiosamlAssertion::physician(&pki.client.cert_der, "https://portvagt.bench", "1111111118")
            .sign(&pki.sts)
            .expect("assertion");
    for (name, xml) in [
        ("sosi_user_card_rsa_sha256", &user),
        ("sosi_system_card_rsa_sha1", &legacy),
        ("oiosaml_xua_rsa_sha256", &oiosaml),
    ] {
        policy.verify(xml.as_bytes(), &peer, now).expect("verifies");
        c.bench_function(&format!("saml_verify/{name}"), |b| {
            b.iter(|| policy.verify(black_box(xml.as_bytes()), &peer, now))
        });
    }
}

criterion_group!(benches, verify_assertions);
criterion_main!(benches);
