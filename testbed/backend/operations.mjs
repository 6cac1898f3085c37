// More R4 operations for the testbed FHIR backend, each as small as its definition allows:
//
// - [type]/[id]/$meta (Resource-meta): a Parameters whose `return` is the instance's meta.
// - Observation/$lastn (Observation-lastn): the most recent `max` (default 1) Observations per
//   code among those the other parameters (any Observation search parameter) match, newest
//   first, in a searchset Bundle without paging.
// - Composition/[id]/$document (Composition-document): a document Bundle holding the
//   Composition and the resources its subject, authors and section entries reference.
//   `persist` is refused (the testbed stores no documents).

import { OperationOutcomeError, allOk, badRequest, generateId, parseSearchRequest } from '@medplum/core';

import { MAX_PAGE_SIZE } from './repository.mjs';

const RELATIVE_REF = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/;

export const OPERATION_DEFINITIONS = {
  meta: 'http://hl7.org/fhir/OperationDefinition/Resource-meta',
  lastn: 'http://hl7.org/fhir/OperationDefinition/Observation-lastn',
  document: 'http://hl7.org/fhir/OperationDefinition/Composition-document',
};

/** FhirRouter handler for GET [type]/[id]/$meta. */
export function metaHandler(repo) {
  return async (req) => {
    const { resourceType, id } = req.params;
    const resource = await repo.readResource(resourceType, id); // 404 unknown, 410 deleted
    return [
      allOk,
      { resourceType: 'Parameters', parameter: [{ name: 'return', valueMeta: resource.meta ?? {} }] },
    ];
  };
}

/** FhirRouter handler for GET Observation/$lastn. */
export function lastnHandler(repo) {
  return async (req) => {
    const query = { ...(req.query ?? {}) };
    const raw = query.max;
    delete query.max;
    const max = raw === undefined ? 1 : Number(Array.isArray(raw) ? raw[raw.length - 1] : raw);
    if (!Number.isInteger(max) || max < 1) {
      throw new OperationOutcomeError(badRequest('max must be a positive integer'));
    }
    if (query._count !== undefined || query._offset !== undefined) {
      throw new OperationOutcomeError(badRequest('$lastn does not page'));
    }
    const bundle = await repo.search(
      parseSearchRequest('Observation', { ...query, _sort: '-date', _count: String(MAX_PAGE_SIZE) })
    );
    const perCode = new Map();
    const entry = [];
    for (const e of bundle.entry ?? []) {
      if (e.search?.mode === 'include') {
        continue;
      }
      const coding = e.resource.code?.coding?.[0];
      const key = coding ? `${coding.system}|${coding.code}` : `text|${e.resource.code?.text}`;
      const seen = perCode.get(key) ?? 0;
      if (seen < max) {
        perCode.set(key, seen + 1);
        entry.push({ fullUrl: e.fullUrl, resource: e.resource, search: { mode: 'match' } });
      }
    }
    return [
      allOk,
      {
        resourceType: 'Bundle',
        id: generateId(),
        type: 'searchset',
        total: entry.length,
        link: [{ relation: 'self', url: `${repo.baseUrl}/Observation/$lastn` }],
        ...(entry.length ? { entry } : undefined),
      },
    ];
  };
}

/** FhirRouter handler for GET Composition/[id]/$document. */
export function documentHandler(repo) {
  return async (req) => {
    const persist = req.query?.persist;
    if (persist !== undefined && persist !== 'false') {
      throw new OperationOutcomeError(badRequest('This server does not persist documents'));
    }
    const composition = await repo.readResource('Composition', req.params.id);
    const refs = [composition.subject, ...(composition.author ?? [])]
      .concat((composition.section ?? []).flatMap((s) => s.entry ?? []))
      .map((r) => r?.reference)
      .filter((r) => typeof r === 'string');
    const entry = [{ fullUrl: repo.fullUrl('Composition', composition.id), resource: composition }];
    const seen = new Set([`Composition/${composition.id}`]);
    for (const ref of refs) {
      const m = RELATIVE_REF.exec(ref);
      if (!m || seen.has(ref)) {
        continue;
      }
      seen.add(ref);
      try {
        entry.push({ fullUrl: repo.fullUrl(m[1], m[2]), resource: await repo.readResource(m[1], m[2]) });
      } catch {
        // dangling reference: not in the document
      }
    }
    return [
      allOk,
      {
        resourceType: 'Bundle',
        id: generateId(),
        type: 'document',
        identifier: { system: 'urn:ietf:rfc:3986', value: `urn:uuid:${generateId()}` },
        timestamp: new Date().toISOString(),
        entry,
      },
    ];
  };
}
