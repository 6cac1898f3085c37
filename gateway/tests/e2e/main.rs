//! End-to-end tests: the real `portvagt` binary, real TLS with dev-PKI certificates, and the
//! real reference FHIR backend (Medplum's FHIR router, started once per test run).

mod support;

mod abuse;
mod audit;
mod authentication;
mod authorization;
mod authserver;
mod bypass;
mod citizen;
mod citizen_blocks;
mod compartment;
mod conformance;
mod consent;
mod decisions;
mod demo;
mod export;
mod fhir_operations;
mod identity;
mod load_smoke;
mod mass_lookup;
mod operations;
mod paging;
mod proxying;
mod reach;
mod relationship;
mod reload;
mod resilience;
mod routing;
mod rules;
mod token_exchange;
mod traces;
mod transport;
mod xml;
