//! The agents of an AuditEvent (BALP): the client system, this gateway, the user with their
//! identifiers, roles and purpose, their organisation, and whom they acted for. It only reads
//! the access's facts; it writes no other element of the event.

use super::{
    AccessFacts, Agent, AuditSource, Coding, Concept, Identifier, Network, OtherId, Text, Who,
};
use crate::auth::Principal;
use crate::tls::PeerIdentity;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const OTHER_ID: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/ihe-otherId";
/// Autorisationsregister profession codes.
const ROLE_SYSTEM: &str = "urn:oid:1.2.208.176.1.3";
const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";
const AUTHORIZATION_SYSTEM: &str = "https://autregweb.sst.dk";

pub(super) fn agents<'a>(
    facts: &'a AccessFacts<'a>,
    source: &'a AuditSource,
    purposes: &[Concept<'a>],
) -> Vec<Agent<'a>> {
    let mut agents = Vec::new();
    let client_display: Text<'a> = facts
        .principal
        .and_then(|p| p.identity().system_name.as_deref())
        .or_else(|| facts.peer.map(PeerIdentity::subject))
        .unwrap_or("unknown client")
        .into();
    let mut client = Agent::new(
        Coding::new(DCM, "110153", Some("Source Role ID")),
        Who {
            identifier: facts
                .principal
                .and_then(Principal::client_id)
                .map(|client_id| Identifier {
                    system: None,
                    value: client_id.into(),
                }),
            reference: None,
            display: Some(client_display),
        },
        facts.principal.is_none(),
    );
    client.network = facts.client_ip.map(|ip| Network {
        address: ip.to_string().into(),
        r#type: "2",
    });
    client.alt_id = facts.peer.map(PeerIdentity::subject);
    agents.push(client);
    let mut gateway = Agent::new(
        Coding::new(DCM, "110152", Some("Destination Role ID")),
        Who {
            display: Some(source.observer.as_str().into()),
            ..Who::default()
        },
        false,
    );
    gateway.network = Some(Network {
        address: source.site.as_str().into(),
        r#type: "5",
    });
    agents.push(gateway);
    let Some(principal) = facts.principal else {
        return agents;
    };
    let identity = principal.identity();
    let mut user = Agent::new(
        Coding::new(
            "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
            "humanuser",
            Some("human user"),
        ),
        Who {
            identifier: Some(Identifier {
                system: Some(principal.issuer().into()),
                value: principal.subject().into(),
            }),
            reference: principal.fhir_user().map(Into::into),
            display: Some(
                identity
                    .name
                    .as_deref()
                    .unwrap_or(principal.subject())
                    .into(),
            ),
        },
        true,
    );
    user.name = identity.name.as_deref();
    user.policy = principal
        .jti()
        .map(|jti| vec![format!("urn:ietf:params:oauth:jti:{jti}")])
        .unwrap_or_default();
    user.role = principal
        .roles()
        .iter()
        .map(|role| Concept::one(Coding::new(ROLE_SYSTEM, role.as_str(), None)))
        .collect();
    user.purpose_of_use = purposes.to_vec();
    if let Some(cpr) = &identity.cpr {
        user.extension.push(OtherId {
            url: OTHER_ID,
            value_identifier: Identifier {
                system: Some(CPR_SYSTEM.into()),
                value: cpr.as_str().into(),
            },
        });
    }
    if let Some(authorization) = &identity.authorization_id {
        user.extension.push(OtherId {
            url: OTHER_ID,
            value_identifier: Identifier {
                system: Some(AUTHORIZATION_SYSTEM.into()),
                value: authorization.as_str().into(),
            },
        });
    }
    agents.push(user);
    let organisation = identity
        .organisation
        .as_ref()
        .map(|org| {
            (
                Text::from(org.system()),
                org.id.as_str(),
                org.name.as_deref(),
            )
        })
        .or_else(|| {
            // The certificate's organisation: its CVR, and its name (`O=`) for the citizen.
            let peer = facts.peer?;
            peer.cvr()
                .map(|cvr| (Text::from("http://cvr.dk"), cvr, peer.organisation_name()))
        });
    if let Some((system, id, name)) = organisation {
        agents.push(Agent::new(
            Coding::new(
                "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                "PROV",
                Some("healthcare provider"),
            ),
            Who {
                identifier: Some(Identifier {
                    system: Some(system),
                    value: id.into(),
                }),
                reference: None,
                display: name.map(Into::into),
            },
            false,
        ));
    }
    if let Some(on_behalf_of) = &identity.on_behalf_of {
        agents.push(Agent::new(
            Coding::new(
                "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "RESP",
                Some("responsible party"),
            ),
            Who {
                identifier: Some(Identifier {
                    system: None,
                    value: on_behalf_of.as_str().into(),
                }),
                ..Who::default()
            },
            false,
        ));
    }
    agents
}
