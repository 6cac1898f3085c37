//! The request table: classification and decision for allowed requests and for the bypass
//! attempts gateways have fallen for. One row per case:
//!
//! `scopes | patient | method | url | expected`
//!
//! where `patient` is the token's `patient` claim (`-`: none), followed by `@<fhirUser>` when
//! the token names its user and preceded by `citizen:` for a request on the citizen listener
//! (where the operator opened `Observation` besides the audit log; `blocks:` the same with
//! citizens' own blocks on), and `expected` is `allow`, `allow+block` (the gateway makes or
//! lifts the citizen's block itself),
//! `allow+check` (answer checked against the compartment), `allow+verify` (the target of a write
//! is read and checked first), `allow+narrow:<param>=<value>`
//! (search narrowed, answer checked), `allow+restrict:<param>=<value>` (answers must satisfy a
//! granular scope), `deny:<reason code>` or `invalid:<classify error code>`; `+view` is added
//! when the answer must be given in the citizen's view, `+elements:<a,b>` when the gateway adds
//! those elements to `_elements` (and takes them out of the answer).

use portvagt_policy::{Channel, Decision, ScopeSet, Subject, classify, decide};

const CASES: &str = r#"
# --- user and system scopes: type and permission ---------------------------------------------
user/Patient.rs             | - | GET    | Patient/pat-anne                      | allow
user/Patient.read           | - | GET    | Patient/pat-anne/_history/1           | allow
user/Patient.read           | - | GET    | Patient/pat-anne/_history             | allow
user/Patient.read           | - | GET    | Patient?name=Hansen                   | allow
user/Patient.read           | - | POST   | Patient/_search?name=Hansen           | allow
user/Patient.read           | - | POST   | Patient                               | deny:insufficient-scope
user/Patient.read           | - | GET    | Observation/obs-1                     | deny:insufficient-scope
user/Patient.write          | - | POST   | Patient                               | allow
user/Patient.write          | - | DELETE | Patient/pat-anne                      | allow
user/Patient.write          | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
user/Patient.*              | - | PATCH  | Patient/pat-anne                      | allow
user/Observation.r          | - | GET    | Observation/obs-1                     | allow
user/Observation.r          | - | GET    | Observation?code=x                    | deny:insufficient-scope
user/Observation.s          | - | GET    | Observation?code=x                    | allow
user/Observation.s          | - | GET    | Observation/obs-1                     | deny:insufficient-scope
user/Observation.c          | - | POST   | Observation                           | allow
user/Observation.u          | - | PUT    | Observation/obs-1                     | allow
user/Observation.u          | - | PATCH  | Observation/obs-1                     | allow
user/Observation.d          | - | DELETE | Observation/obs-1                     | allow
user/Observation.cud        | - | GET    | Observation/obs-1                     | deny:insufficient-scope
user/Observation.cruds      | - | GET    | Observation/_history                  | allow
user/Observation.r          | - | GET    | Observation/_history                  | deny:insufficient-scope
system/*.cruds              | - | GET    | Encounter/enc-1                       | allow
system/*.rs                 | - | GET    | _history                              | allow
system/*.rs                 | - | GET    | ?_type=Patient                        | allow
system/Patient.rs           | - | GET    | ?_type=Patient                        | deny:insufficient-scope
system/Patient.rs           | - | GET    | _history                              | deny:insufficient-scope
user/*.rs                   | - | GET    | metadata                              | allow
-                           | - | GET    | metadata                              | allow
-                           | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
openid fhirUser launch      | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
*.*                         | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
admin/Patient.rs            | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
user/patient.rs             | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
user/Patient.sr             | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
user/Patient.rr             | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
user/Patient.READ           | - | GET    | Patient/pat-anne                      | deny:insufficient-scope
user/Patient.rs             | - | GET    | Patient/pat-anne                      | allow
# --- conditional interactions search first ---------------------------------------------------
user/Observation.u          | - | PUT    | Observation?identifier=x              | deny:insufficient-scope
user/Observation.cus        | - | PUT    | Observation?identifier=x              | allow
user/Observation.us         | - | PATCH  | Observation?identifier=x              | allow
user/Observation.u          | - | PATCH  | Observation?identifier=x              | deny:insufficient-scope
user/Observation.d          | - | DELETE | Observation?patient=pat-bo            | deny:insufficient-scope
user/Observation.ds         | - | DELETE | Observation?patient=pat-bo            | allow
user/Observation.cruds      | - | DELETE | Observation                           | invalid:method-not-allowed
user/Observation.cruds      | - | PUT    | Observation                           | invalid:method-not-allowed
# --- compartment search and operations -------------------------------------------------------
user/Observation.s          | - | GET    | Patient/pat-bo/Observation            | allow
user/Observation.s          | - | GET    | Patient/pat-bo/Condition              | deny:insufficient-scope
user/Observation.s          | - | GET    | Patient/pat-bo/*                      | deny:insufficient-scope
user/*.rs                   | - | GET    | Patient/pat-bo/*                      | allow
user/*.rs                   | - | GET    | Encounter/enc-1/Observation           | allow
user/*.rs                   | - | GET    | Basic/b1/Observation                  | invalid:unknown-path
user/*.rs                   | - | GET    | Patient/pat-bo/$everything            | allow
user/Patient.rs             | - | GET    | Patient/pat-bo/$everything            | deny:insufficient-scope
# --- Bulk Data $export: system scopes only, one covering every type exported ----------------
system/*.rs                 | - | GET    | $export                               | allow
system/*.rs                 | - | GET    | Patient/$export?_type=Observation,Condition | allow
system/*.rs                 | - | GET    | Group/grp-1/$export                   | allow
system/Observation.rs       | - | GET    | $export?_type=Observation             | allow
system/Observation.rs       | - | GET    | Patient/$export?_type=Observation     | allow
system/Observation.rs       | - | GET    | $export                               | deny:insufficient-scope
system/Observation.rs       | - | GET    | $export?_type=Observation,Patient     | deny:insufficient-scope
system/Observation.rs       | - | GET    | $export?_type=Observation&_type=Patient | deny:insufficient-scope
system/Observation.rs system/Patient.rs | - | GET | $export?_type=Observation,Patient | deny:insufficient-scope
system/*.r                  | - | GET    | $export                               | deny:insufficient-scope
user/*.cruds                | - | GET    | $export                               | deny:insufficient-scope
user/*.cruds                | - | GET    | Patient/$export                       | deny:insufficient-scope
patient/*.rs                | pat-anne | GET | Patient/$export                    | deny:insufficient-scope
patient/*.rs                | pat-anne | GET | Group/grp-1/$export                | deny:insufficient-scope
system/*.rs                 | - | GET    | $export?_elements=id                  | deny:references-hidden
system/Observation.rs       | - | GET    | $export?_type:x=Observation           | deny:unsupported-interaction
system/*.rs                 | - | GET    | $export?_type:x=Observation           | deny:unsupported-interaction
system/Observation.rs       | - | GET    | $export?_type=Observation&includeAssociatedData=LatestProvenanceResources | deny:unsupported-interaction
system/*.rs                 | - | GET    | $export?includeAssociatedData=LatestProvenanceResources | allow
system/Observation.rs       | - | GET    | $export?_type=Observation&_typeFilter=Observation%3Fstatus%3Dfinal&_since=2026-01-01 | allow
system/*.rs                 | - | GET    | $export?handling=lenient              | deny:unsupported-interaction
system/*.rs                 | - | POST   | $export                               | deny:unsupported-interaction
system/*.rs                 | - | GET    | Patient/$export?_type=AuditEvent      | deny:audit-log-restricted
system/*.rs                 | - | GET    | Observation/$export                   | deny:unsupported-interaction
system/*.rs                 | - | GET    | Patient/pat-anne/$export              | deny:unsupported-interaction
system/*.rs                 | citizen:- | GET | $export                            | deny:citizen-listener
# --- declared operations: terminology, granted by reading its type ----------------------------
user/ValueSet.rs            | - | GET    | ValueSet/$expand?url=http://x.dk/vs   | allow
user/ValueSet.r             | - | POST   | ValueSet/vs-1/$expand                 | allow
user/CodeSystem.r           | - | GET    | CodeSystem/$lookup?system=x&code=y    | allow
user/*.rs                   | - | GET    | CodeSystem/$validate-code?code=y      | allow
system/ConceptMap.r         | - | GET    | ConceptMap/cm-1/$translate?code=y     | allow
patient/*.rs                | pat-anne | GET | ValueSet/$expand?url=http://x.dk/vs | allow
patient/ValueSet.r          | pat-anne | GET | ValueSet/$expand                    | allow
user/ValueSet.s             | - | GET    | ValueSet/$expand                      | deny:insufficient-scope
user/Observation.rs         | - | GET    | ValueSet/$expand                      | deny:insufficient-scope
patient/ValueSet.r          | pat-anne | GET | ConceptMap/$translate               | deny:insufficient-scope
user/*.rs                   | - | GET    | Observation/$expand                   | deny:unsupported-interaction
user/*.rs                   | - | GET    | $expand                               | deny:unsupported-interaction
user/*.rs                   | - | GET    | CodeSystem/cs-1/$lookup               | deny:unsupported-interaction
user/*.rs                   | - | GET    | ValueSet/$expand?_include=*           | deny:search-reaches-other-types
patient/*.rs                | pat-anne | GET | ValueSet/$expand?_revinclude=Observation:value-concept | deny:search-reaches-other-types
user/*.rs                   | - | GET    | ValueSet/$expand?_has:Observation:code:subject=Patient/pat-bo | deny:search-reaches-other-types
# --- declared operations: validation, meta, searches by other names, documents ----------------
user/Observation.r          | - | POST   | Observation/$validate                 | allow
patient/Observation.r       | pat-anne | POST | Observation/$validate            | allow
user/Observation.s          | - | POST   | Observation/$validate                 | deny:insufficient-scope
user/Observation.r          | - | POST   | Observation/obs-1/$validate           | allow
patient/Observation.r       | pat-anne | POST | Observation/obs-bo-bp/$validate  | allow+verify
user/*.cruds                | - | POST   | $validate                             | deny:unsupported-interaction
user/*.cruds                | - | POST   | Practitioner/prac-1/$validate?mode=delete | deny:unsupported-interaction
patient/*.rs                | pat-anne | POST | Patient/pat-anne/$validate?mode=delete | deny:unsupported-interaction
patient/*.rs                | pat-anne | POST | Patient/pat-anne/$validate?mode=update | allow+verify
patient/Observation.rs?category=laboratory | pat-anne | GET | Observation/obs-1/$meta | deny:granular-scope-unsupported
user/Observation.rs?category=laboratory | - | GET | Observation/obs-1/$meta | deny:granular-scope-unsupported
user/*.cruds                | - | GET    | Patient/pat-bo/$meta                  | allow
patient/*.rs                | pat-anne | GET | Patient/pat-anne/$meta             | allow+verify
patient/*.rs                | pat-anne | GET | Patient/pat-bo/$meta               | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation/obs-bo-bp/$meta        | allow+verify
patient/*.rs                | pat-anne | GET | Practitioner/prac-1/$meta          | deny:outside-compartment
user/*.rs                   | - | GET    | Observation/$meta                     | deny:unsupported-interaction
user/*.rs                   | - | GET    | $meta                                 | deny:unsupported-interaction
user/Observation.s          | - | GET    | Observation/$lastn?patient=pat-bo&category=vital-signs | allow
user/Observation.r          | - | GET    | Observation/$lastn?patient=pat-bo     | deny:insufficient-scope
system/Observation.rs       | - | GET    | Observation/$lastn?category=laboratory | allow
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?category=vital-signs | allow+narrow:subject=Patient/pat-anne
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?patient=pat-anne | allow+check
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?patient=pat-bo  | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?subject:Patient=pat-bo | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?performer=Patient/pat-bo | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?_include=Observation:subject | deny:search-reaches-other-types
patient/Observation.rs      | pat-anne | GET | Observation/$lastn?patient.name=Hansen | deny:search-reaches-other-types
patient/Observation.rs?category=laboratory | pat-anne | GET | Observation/$lastn?patient=pat-anne | allow+narrow:category=laboratory
user/*.rs                   | - | GET    | Condition/$lastn                      | deny:unsupported-interaction
patient/Observation.rs      | pat-anne | POST | Observation/$lastn                 | deny:outside-compartment
patient/Observation.rs      | pat-anne | POST | Observation/$lastn?patient=pat-anne | allow+check
user/Observation.rs         | - | POST   | Observation/$lastn                    | allow
user/DocumentReference.s    | - | GET    | DocumentReference/$docref?patient=pat-bo | allow
patient/DocumentReference.rs | pat-anne | GET | DocumentReference/$docref?patient=pat-anne | allow+check
patient/DocumentReference.rs | pat-anne | GET | DocumentReference/$docref?patient=pat-bo | deny:outside-compartment
patient/DocumentReference.rs | pat-anne | GET | DocumentReference/$docref | allow+narrow:subject=Patient/pat-anne
user/Composition.r          | - | GET    | Composition/comp-1/$document          | allow
user/Composition.s          | - | GET    | Composition/comp-1/$document          | deny:insufficient-scope
patient/Composition.r       | pat-anne | GET | Composition/comp-1/$document       | allow+verify
patient/*.rs                | pat-anne | GET | Composition/comp-1/$document?_include=* | allow+verify
user/*.cruds                | - | GET    | Composition/comp-1/$document?persist=true | deny:unsupported-interaction
user/*.cruds                | - | POST   | Composition/comp-1/$document?persist=TRUE | deny:unsupported-interaction
user/*.rs                   | - | GET    | Composition/comp-1/$document?persist=false | allow
user/*.rs                   | - | GET    | Composition/$document                 | deny:unsupported-interaction
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Observation/$lastn | deny:citizen-listener
user/*.cruds                | - | POST   | $graphql                              | deny:unsupported-interaction
user/*.cruds                | - | GET    | Observation/$everything               | deny:unsupported-interaction
# --- searches reaching other types ------------------------------------------------------------
user/Observation.rs         | - | GET    | Observation?_include=Observation:subject         | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?_include=*                           | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?_include:iterate=Observation:subject | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?_revinclude=Provenance:target        | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?_has:Condition:subject:code=x        | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?subject.name=Bo                      | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?subject:Patient.name=Bo              | deny:search-reaches-other-types
user/Observation.rs         | - | GET    | Observation?_contained=true                      | deny:search-reaches-other-types
user/*.rs                   | - | GET    | Observation?_include=Observation:subject         | allow
user/*.rs                   | - | GET    | Observation?subject.name=Bo                      | allow
# --- granular v2 scopes narrow searches ------------------------------------------------------
user/Observation.rs?category=laboratory | - | GET | Observation?patient=pat-bo     | allow+narrow:category=laboratory
user/Observation.rs?category=laboratory | - | GET | Observation/obs-1              | allow+restrict:category=laboratory
user/Observation.cruds?category=laboratory | - | POST | Observation                 | deny:granular-scope-unsupported
user/Observation.cruds?category=laboratory | - | DELETE | Observation/obs-1         | deny:granular-scope-unsupported
user/Observation.rs?category=laboratory | - | GET | Observation?_include=Observation:subject | deny:search-reaches-other-types
# --- ambiguity is refused -------------------------------------------------------------------
user/*.cruds                | - | GET    | Patient/pat-anne/../pat-bo            | invalid:path-dot-segment
user/*.cruds                | - | GET    | Patient/%2e%2e/pat-bo                 | invalid:path-dot-segment
user/*.cruds                | - | GET    | Patient/.                             | invalid:path-dot-segment
user/*.cruds                | - | GET    | Patient%2Fpat-bo                      | invalid:path-encoded-slash
user/*.cruds                | - | GET    | Patient/pat-anne%2F..%2Fpat-bo        | invalid:path-encoded-slash
user/*.cruds                | - | GET    | Patient/pat-anne%5C..                 | invalid:path-encoded-slash
user/*.cruds                | - | GET    | Patient//pat-anne                     | invalid:path-empty-segment
user/*.cruds                | - | GET    | Patient/pat-anne/                     | invalid:path-empty-segment
user/*.cruds                | - | GET    | /Patient/pat-anne                     | invalid:path-empty-segment
user/*.cruds                | - | GET    | patient/pat-anne                      | invalid:unknown-resource-type
user/*.cruds                | - | GET    | PATIENT/pat-anne                      | invalid:unknown-resource-type
user/*.cruds                | - | GET    | Patients/pat-anne                     | invalid:unknown-resource-type
user/*.cruds                | - | GET    | Resource/x                            | invalid:unknown-resource-type
user/*.cruds                | - | GET    | Patient/pat_anne                      | invalid:malformed-id
user/*.cruds                | - | GET    | Patient/pat-anne;x=1                  | invalid:malformed-id
user/*.cruds                | - | GET    | Patient/%00                           | invalid:bad-encoding
user/*.cruds                | - | GET    | Patient/%zz                           | invalid:bad-encoding
user/*.cruds                | - | GET    | Patient/%C3                           | invalid:bad-encoding
user/*.cruds                | - | GET    | Patient?name=%0d%0aX-Evil:1           | invalid:bad-encoding
user/*.cruds                | - | GET    | Observation?_method=DELETE            | invalid:method-override
user/*.cruds                | - | GET    | Observation?_format=xml               | invalid:unsupported-format
user/*.cruds                | - | GET    | Observation?_format=application/fhir%2Bxml | invalid:unsupported-format
user/*.cruds                | - | GET    | Observation?_format=json              | allow
user/*.cruds                | - | GET    | Observation?_include+=x               | invalid:bad-parameter-name
user/*.cruds                | - | GET    | Observation?_id=a&_id=b               | invalid:conflicting-parameter
user/*.cruds                | - | GET    | Observation?patient=a&patient=b       | invalid:conflicting-parameter
user/*.cruds                | - | GET    | Observation?subject=Patient/a&subject=Patient/b | invalid:conflicting-parameter
user/*.cruds                | - | GET    | Observation?patient=a&patient=a       | allow
user/*.cruds                | - | TRACE  | Patient/pat-anne                      | invalid:method-not-allowed
user/*.cruds                | - | HEAD   | Patient/pat-anne                      | allow
patient/*.rs                | pat-anne | HEAD | Observation/obs-bo-bp            | allow+check
user/*.cruds                | - | GET    | Patient/pat-anne/_history/1/x         | invalid:unknown-path
user/*.cruds                | - | GET    | Patient/pat-anne/Observation/obs-1    | invalid:unknown-path
user/*.cruds                | - | GET    | Patient/$bad!op                       | invalid:unknown-path
# --- patient context: reads --------------------------------------------------------------------
patient/Patient.rs          | pat-anne | GET | Patient/pat-anne                 | allow+check
patient/Patient.rs          | pat-anne | GET | Patient/pat-anne/_history/2      | allow+check
patient/Patient.rs          | pat-anne | GET | Patient/pat-anne/_history        | allow+check
patient/Patient.rs          | pat-anne | GET | Patient/pat-bo                   | deny:outside-compartment
patient/Patient.rs          | pat-anne | GET | Patient/pat-bo/_history/1        | deny:outside-compartment
patient/Patient.rs          | -        | GET | Patient/pat-anne                 | deny:no-patient-context
patient/*.rs                | pat-anne | GET | Observation/obs-bo-bp            | allow+check
patient/Observation.rs      | pat-anne | GET | Observation/obs-anne-bp          | allow+check
patient/Observation.rs      | pat-anne | GET | Condition/cond-anne-1            | deny:insufficient-scope
patient/*.rs                | pat-anne | GET | Practitioner/prac-ns363          | allow+check
patient/*.rs                | pat-anne | GET | Organization/org-1               | allow+check
patient/*.rs                | pat-anne | GET | Binary/doc-1                     | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Group/g1                         | allow+check
patient/*.rs                | pat-anne | GET | Bundle/b1                        | deny:outside-compartment
# --- patient context: searches are pinned or narrowed ------------------------------------------
patient/Observation.rs      | pat-anne | GET | Observation?patient=pat-anne                   | allow+check
patient/Observation.rs      | pat-anne | GET | Observation?patient=Patient/pat-anne           | allow+check
patient/Observation.rs      | pat-anne | GET | Observation?subject=Patient/pat-anne           | allow+check
patient/Observation.rs      | pat-anne | GET | Observation?subject:Patient=pat-anne           | allow+check
patient/Observation.rs      | pat-anne | GET | Observation?performer=Patient/pat-anne         | allow+check
patient/Observation.rs      | pat-anne | GET | Observation?patient=pat-anne&code=4548-4&_count=5&_sort=-date | allow+check
patient/Observation.rs      | pat-anne | GET | Observation                                    | allow+narrow:subject=Patient/pat-anne
patient/Observation.rs      | pat-anne | GET | Observation?code=4548-4                        | allow+narrow:subject=Patient/pat-anne
patient/Observation.rs      | pat-anne | POST | Observation/_search                           | allow+narrow:subject=Patient/pat-anne
patient/AllergyIntolerance.rs | pat-anne | GET | AllergyIntolerance                           | allow+narrow:patient=Patient/pat-anne
patient/Patient.rs          | pat-anne | GET | Patient                                        | allow+narrow:_id=pat-anne
patient/Patient.rs          | pat-anne | GET | Patient?_id=pat-anne                           | allow+check
patient/Patient.rs          | pat-anne | GET | Patient?_id=pat-bo                             | deny:outside-compartment
patient/Patient.rs          | pat-anne | GET | Patient?name=Jensen                            | allow+narrow:_id=pat-anne
patient/Observation.rs      | pat-anne | GET | Observation?patient=pat-bo                     | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient=Patient/pat-bo             | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient=pat-anne,pat-bo            | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?subject=Patient/pat-bo             | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?subject=Group/g1                   | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient=pat-anne&subject=Patient/pat-bo | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient:missing=true               | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?subject:Patient=pat-bo             | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?subject=https://x.example/fhir/Patient/pat-bo | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?performer=https://x.example/Patient/pat-bo | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?performer=pat-bo                   | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient=Patient/pat-bo/_history/1  | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?focus=Patient/pat-bo               | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient:identifier=urn:oid:1.2.208.176.1.2%7C0501792275 | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?subject=urn:uuid:9a1                | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient:not=Patient/pat-anne       | deny:outside-compartment
patient/Patient.rs          | pat-anne | GET | Patient?link:identifier=urn:oid:1.2.208.176.1.2%7C0501792275 | deny:outside-compartment
patient/Patient.rs          | pat-anne | GET | Patient?identifier=urn:oid:1.2.208.176.1.2%7C0501792275 | allow+narrow:_id=pat-anne
patient/Observation.rs      | pat-anne | GET | Observation?subject=https://x.example/fhir/Patient/pat-anne | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?subject:Group=pat-anne             | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient=pat-anne&_include=Observation:subject | deny:search-reaches-other-types
patient/*.rs                | pat-anne | GET | Observation?patient=pat-anne&_include=Observation:performer | allow+check
patient/*.rs                | pat-anne | GET | Observation?patient=pat-anne&_include=*        | allow+check
patient/*.rs                | pat-anne | GET | Patient?_id=pat-anne&_revinclude=Observation:subject | allow+check
patient/*.rs                | pat-anne | GET | Observation?patient=pat-anne&subject.name=Anne | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?subject:Patient.name=Bo            | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Patient?_has:Observation:patient:code=x        | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Practitioner?name=Kjaer                        | allow+check
patient/*.rs                | pat-anne | GET | Organization?_revinclude=Patient:organization  | allow+check
patient/*.rs                | pat-anne | GET | Practitioner?_revinclude=Observation:performer | allow+check
patient/*.rs                | pat-anne | GET | Observation?_elements=id                       | allow+narrow:subject=Patient/pat-anne+elements:performer,subject,contained
patient/*.rs                | pat-anne | GET | Observation/obs-anne-bp?_elements=code,subject | allow+check+elements:performer,contained
user/*.rs                   | - | GET    | Observation?_elements=code                 | allow+elements:performer,subject,contained
patient/*.rs                | pat-anne | GET | Observation?_elements:exclude=subject          | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_elements=id&_elements=code        | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_elements=id&_include=Observation:subject | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_summary=true                      | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_summary=data                      | allow+narrow:subject=Patient/pat-anne
patient/*.rs                | pat-anne | GET | Observation?_summary=DATA                      | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_fields=code                       | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_elements=subject.reference        | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_elements=code&_contained=true     | deny:outside-compartment
user/*.rs                   | - | GET    | Device/dev-1?_elements=type                | allow+elements:patient,contained
user/*.rs                   | - | GET    | Practitioner?_elements=name                | allow
patient/*.rs                | pat-anne | GET | Observation?_summary=text                      | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation?_summary=count                     | allow+narrow:subject=Patient/pat-anne
patient/*.rs                | pat-anne | GET | Observation?_filter=subject%20eq%20x           | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Group?patient=pat-anne                         | allow+narrow:member=Patient/pat-anne
patient/*.rs                | pat-anne | GET | Binary?_id=doc-1                               | deny:outside-compartment
patient/*.rs                | pat-anne | GET | ?_type=Observation                             | deny:outside-compartment
patient/*.rs                | pat-anne | GET | _history                                       | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation/_history                           | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Observation/obs-1/_history                     | allow+check
patient/Observation.rs?category=laboratory | pat-anne | GET | Observation            | allow+narrow:category=laboratory
patient/Observation.rs      | pat-anne | GET | Observation?performer=Practitioner/prac-ns363  | allow+narrow:subject=Patient/pat-anne
patient/Observation.rs      | pat-anne | GET | Observation?performer:Practitioner=prac-ns363  | allow+narrow:subject=Patient/pat-anne
patient/Observation.rs      | pat-anne | GET | Observation?performer=prac-ns363               | deny:outside-compartment
patient/Observation.rs      | pat-anne | GET | Observation?patient:identifier=urn:oid:1.2.208.176.1.2%7C0501792275 | deny:outside-compartment
patient/Condition.rs        | pat-anne | GET | Condition?subject=pat-bo                       | deny:outside-compartment
patient/Condition.rs        | pat-anne | GET | Condition?subject=Patient/pat-anne             | allow+narrow:patient=Patient/pat-anne
patient/Observation.rs      | pat-anne | GET | Patient/pat-anne/Observation?patient=pat-bo    | deny:outside-compartment
# --- patient context: compartment search and $everything --------------------------------------
patient/Observation.rs      | pat-anne | GET | Patient/pat-anne/Observation     | allow+check
patient/Observation.rs      | pat-anne | GET | Patient/pat-bo/Observation       | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Patient/pat-anne/*               | allow+check
patient/*.rs                | pat-anne | GET | Encounter/enc-anne-1/Observation | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Patient/pat-anne/Practitioner    | deny:outside-compartment
patient/*.rs                | pat-anne | GET | Patient/pat-anne/$everything     | allow+check
patient/*.rs                | pat-anne | GET | Patient/pat-bo/$everything       | deny:outside-compartment
patient/Patient.rs          | pat-anne | GET | Patient/pat-anne/$everything     | deny:insufficient-scope
# --- patient context: writes -----------------------------------------------------------------
patient/Observation.cruds   | pat-anne | PUT    | Observation/obs-anne-bp        | deny:write-not-verifiable
patient/Observation.cruds   | pat-anne | PATCH  | Observation/obs-anne-bp        | deny:write-not-verifiable
patient/Observation.cruds   | pat-anne | DELETE | Observation/obs-bo-bp          | allow+verify
patient/Patient.cruds       | pat-anne | DELETE | Patient/pat-anne               | deny:outside-compartment
patient/*.cruds             | pat-anne | DELETE | Practitioner/prac-ns363        | deny:outside-compartment
patient/Observation.cruds   | pat-anne | DELETE | Observation?patient=pat-bo     | deny:outside-compartment
patient/Observation.cruds   | pat-anne | DELETE | Observation?patient=pat-anne   | deny:write-not-verifiable
patient/Observation.cruds   | pat-anne | PUT    | Observation?identifier=x       | deny:write-not-verifiable
patient/Observation.cruds   | pat-anne | POST   | Observation                    | deny:write-not-verifiable
# --- the audit log: a citizen's own, nobody else's, never written through the gateway -------
patient/AuditEvent.rs       | pat-anne@Patient/pat-anne | GET | AuditEvent        | allow+narrow:patient=Patient/pat-anne+view
patient/AuditEvent.rs       | pat-anne@https://fhir.example/Patient/pat-anne | GET | AuditEvent/ae-1 | allow+check+view
patient/AuditEvent.rs       | pat-anne@Patient/pat-anne | GET | AuditEvent?patient=pat-bo | deny:outside-compartment
patient/AuditEvent.rs       | pat-anne | GET | AuditEvent                          | deny:audit-log-restricted
patient/AuditEvent.rs       | pat-anne@Practitioner/prac-ns363 | GET | AuditEvent  | deny:audit-log-restricted
patient/AuditEvent.rs       | pat-anne@Patient/pat-bo | GET | AuditEvent            | deny:audit-log-restricted
patient/AuditEvent.rs       | pat-anne@Patient/pat-anne-2 | GET | AuditEvent        | deny:audit-log-restricted
patient/AuditEvent.rs       | pat-anne@xPatient/pat-anne | GET | AuditEvent         | deny:audit-log-restricted
patient/AuditEvent.rs       | pat-anne@Patient/pat-anne/_history/1 | GET | AuditEvent | deny:audit-log-restricted
patient/*.rs                | pat-anne | GET | Observation/obs-anne-bp             | allow+check
user/*.cruds                | - | GET    | AuditEvent?patient=pat-anne            | deny:audit-log-restricted
system/AuditEvent.rs        | - | GET    | AuditEvent/ae-1                        | deny:audit-log-restricted
user/*.cruds                | - | POST   | AuditEvent                             | deny:audit-log-restricted
patient/AuditEvent.cruds    | pat-anne | DELETE | AuditEvent/ae-1                 | deny:audit-log-restricted
# --- the citizen listener: the citizen about themselves, their log and what is opened -------
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | AuditEvent   | allow+narrow:patient=Patient/pat-anne+view
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | AuditEvent/ae-1 | allow+check+view
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Observation?code=x | allow+narrow:subject=Patient/pat-anne
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Observation/obs-anne-bp/_history/1 | allow+check
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Condition?code=x   | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Patient/pat-anne   | deny:citizen-listener
patient/*.cruds             | citizen:pat-anne@Patient/pat-anne | POST | Observation       | deny:citizen-listener
patient/*.cruds             | citizen:pat-anne@Patient/pat-anne | DELETE | AuditEvent/ae-1 | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Observation/obs-anne-bp/_history | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Patient/pat-anne/$everything | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | metadata           | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | ?_type=AuditEvent  | deny:citizen-listener
patient/*.rs                | citizen:pat-anne | GET | AuditEvent                        | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Practitioner/prac-ns363 | GET | AuditEvent | deny:citizen-listener
user/*.rs                   | citizen:-@Patient/pat-anne | GET | AuditEvent              | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | AuditEvent?patient=pat-bo | deny:outside-compartment
patient/Observation.rs      | citizen:pat-anne@Patient/pat-anne | GET | AuditEvent     | deny:insufficient-scope
user/Observation.rs         | citizen:pat-anne@Patient/pat-anne | GET | Observation?code=x | deny:insufficient-scope
user/*.rs patient/*.rs      | citizen:pat-anne@Patient/pat-anne | GET | Observation?code=x | allow+narrow:subject=Patient/pat-anne
system/*.rs patient/*.rs    | citizen:pat-anne@Patient/pat-anne | GET | Observation/obs-bo-bp | allow+check
# --- citizens' own blocks: a Consent create or patch, answered by the gateway; reads as any --
patient/Consent.cu          | blocks:pat-anne@Patient/pat-anne | POST | Consent          | allow+block
patient/Consent.cu          | blocks:pat-anne@Patient/pat-anne | PATCH | Consent/blk-1   | allow+block
patient/Consent.rs          | blocks:pat-anne@Patient/pat-anne | GET | Consent?status=active | allow+narrow:patient=Patient/pat-anne
patient/Consent.rs          | blocks:pat-anne@Patient/pat-anne | GET | Consent/blk-1     | allow+check
patient/Consent.rs          | blocks:pat-anne@Patient/pat-anne | POST | Consent          | deny:insufficient-scope
patient/Consent.cruds       | blocks:pat-anne@Patient/pat-anne | PUT | Consent/blk-1     | deny:citizen-listener
patient/Consent.cruds       | blocks:pat-anne@Patient/pat-anne | DELETE | Consent/blk-1  | deny:citizen-listener
patient/Consent.cruds       | blocks:pat-anne@Patient/pat-anne | PATCH | Consent?patient=pat-anne | deny:citizen-listener
patient/Consent.cruds       | blocks:pat-anne@Patient/pat-anne | DELETE | Consent?patient=pat-anne | deny:citizen-listener
patient/Consent.cruds       | blocks:pat-anne@Patient/pat-anne | GET | Consent/blk-1/_history | deny:citizen-listener
patient/*.cruds             | blocks:pat-anne@Patient/pat-anne | POST | Observation      | deny:citizen-listener
patient/Consent.cruds       | blocks:pat-anne | POST | Consent                          | deny:citizen-listener
patient/Consent.cruds       | blocks:pat-anne@Practitioner/prac-ns363 | POST | Consent  | deny:citizen-listener
user/Consent.cruds          | blocks:pat-anne@Patient/pat-anne | POST | Consent          | deny:insufficient-scope
patient/*.rs                | blocks:pat-anne@Patient/pat-anne | GET | Consent?_include=Consent:actor | deny:citizen-listener
patient/*.rs                | blocks:pat-anne@Patient/pat-anne | GET | Consent?_include:iterate=* | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | AuditEvent?_include=AuditEvent:agent | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | AuditEvent?_revinclude=Provenance:target | deny:citizen-listener
patient/*.rs                | citizen:pat-anne@Patient/pat-anne | GET | Observation?_contained=true | deny:citizen-listener
patient/Consent.cruds       | citizen:pat-anne@Patient/pat-anne | POST | Consent         | deny:citizen-listener
patient/Consent.cruds       | citizen:pat-anne@Patient/pat-anne | GET | Consent/blk-1    | deny:citizen-listener
patient/Consent.cruds       | pat-anne@Patient/pat-anne | POST | Consent                | deny:write-not-verifiable
# --- a user scope is not narrowed by a patient scope beside it ------------------------------
patient/Observation.rs user/Observation.rs | pat-anne | GET | Observation/obs-bo-bp  | allow
"#;

fn expectation(decision: &Decision) -> String {
    let (view, elements) = match decision {
        Decision::Allow { obligations, .. } => (
            if obligations.citizen_view {
                "+view"
            } else {
                ""
            },
            if obligations.add_elements.is_empty() {
                String::new()
            } else {
                format!("+elements:{}", obligations.add_elements.join(","))
            },
        ),
        _ => ("", String::new()),
    };
    expectation_without_view(decision) + view + &elements
}

fn expectation_without_view(decision: &Decision) -> String {
    match decision {
        Decision::Deny { reason } => format!("deny:{}", reason.code()),
        Decision::Allow { obligations, .. } if obligations.citizen_block => {
            "allow+block".to_owned()
        }
        Decision::Allow { obligations, .. } if obligations.verify_target => {
            "allow+verify".to_owned()
        }
        Decision::Allow { obligations, .. }
            if obligations.add_params.is_empty() && !obligations.restriction.is_empty() =>
        {
            let (name, value) = &obligations.restriction[0];
            format!("allow+restrict:{name}={value}")
        }
        Decision::Allow { obligations, .. } => {
            match (&obligations.compartment, obligations.add_params.as_slice()) {
                (_, [(name, value), ..]) => format!("allow+narrow:{name}={value}"),
                (Some(_), []) => "allow+check".to_owned(),
                (None, []) => "allow".to_owned(),
            }
        }
    }
}

#[test]
fn every_case_in_the_table() {
    let mut failures = Vec::new();
    let mut count = 0;
    let opened = ["Observation".to_owned()];
    for (line_number, line) in CASES.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        count += 1;
        let columns: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [scopes, patient, method, url, expected] = columns[..] else {
            panic!("line {}: {line}", line_number + 1);
        };
        let scopes = ScopeSet::parse(if scopes == "-" { "" } else { scopes });
        let (channel, patient) = match (
            patient.strip_prefix("citizen:"),
            patient.strip_prefix("blocks:"),
        ) {
            (Some(patient), _) => (
                Channel::Citizen {
                    opened: &opened,
                    blocks: false,
                },
                patient,
            ),
            (None, Some(patient)) => (
                Channel::Citizen {
                    opened: &opened,
                    blocks: true,
                },
                patient,
            ),
            (None, None) => (Channel::Professional, patient),
        };
        let (patient, fhir_user) = match patient.split_once('@') {
            Some((patient, fhir_user)) => (patient, Some(fhir_user)),
            None => (patient, None),
        };
        let patient = (patient != "-").then_some(patient);
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url, None),
        };
        let actual = match classify(method, path, query) {
            Err(error) => format!("invalid:{}", error.code()),
            Ok(request) => expectation(&decide(
                Subject {
                    scopes: &scopes,
                    patient,
                    fhir_user,
                    channel,
                },
                &request,
            )),
        };
        if actual != expected {
            failures.push(format!(
                "line {}: {method} {url}: expected {expected}, got {actual}",
                line_number + 1
            ));
        }
    }
    assert!(count >= 150, "only {count} cases");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
