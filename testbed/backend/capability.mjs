// CapabilityStatement for GET [base]/metadata. Medplum's FhirRouter does not
// serve one, so it is assembled here from the indexed FHIR R4 definitions.

import { getResourceTypes, globalSchema } from '@medplum/core';

import { EVERYTHING_DEFINITION } from './everything.mjs';

const INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
const SEARCHABLE_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);

export function buildCapabilityStatement(baseUrl, version) {
  const resource = getResourceTypes()
    .sort()
    .map((type) => {
      const params = Object.values(globalSchema.types[type]?.searchParams ?? {}).filter(
        (p) => SEARCHABLE_TYPES.has(p.type) && !['_compartment'].includes(p.code)
      );
      const refParams = params.filter((p) => p.type === 'reference').map((p) => `${type}:${p.code}`);
      return {
        type,
        profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
        interaction: INTERACTIONS.map((code) => ({ code })),
        versioning: 'versioned',
        readHistory: true,
        updateCreate: true,
        conditionalCreate: true,
        conditionalRead: 'not-supported',
        conditionalUpdate: true,
        conditionalDelete: 'single',
        searchInclude: refParams,
        searchParam: params
          .map((p) => ({
            name: p.code,
            ...(p.url ? { definition: p.url } : undefined),
            type: p.type,
          }))
          .sort((a, b) => a.name.localeCompare(b.name)),
        ...(type === 'Patient'
          ? { operation: [{ name: 'everything', definition: EVERYTHING_DEFINITION }] }
          : undefined),
      };
    });
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    publisher: 'Portvagt testbed',
    kind: 'instance',
    software: { name: 'Portvagt testbed FHIR backend (Medplum fhir-router, in-memory)', version },
    implementation: { description: 'Portvagt reference FHIR R4 backend', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['json'],
    patchFormat: ['application/json-patch+json'],
    rest: [
      {
        mode: 'server',
        security: { description: 'No authentication: access control is the gateway\'s job.' },
        resource,
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        operation: [{ name: 'graphql', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-graphql' }],
      },
    ],
  };
}
