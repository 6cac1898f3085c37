// In-memory FHIR repository for the Portvagt testbed.
//
// All storage and search matching is Medplum's MemoryRepository. This subclass
// only adds what a real FHIR server does on top of it and the plain in-memory
// store leaves out:
//   - structural validation of every stored resource (Medplum's validateResource)
//   - server-assigned meta.versionId / meta.lastUpdated on every write
//   - deletes are remembered: read of a deleted resource -> 410 Gone, history keeps it
//   - history newest-first with request/response info (and without mutating the store)
//   - atomic transactions (snapshot + rollback around withTransaction)
//   - search: strict parameter checking (400 instead of silently empty results),
//     bare-id / absolute reference values, default page size, _include/_revinclude,
//     and absolute fullUrl / link entries in the returned Bundle.

import {
  OperationOutcomeError,
  badRequest,
  evalFhirPath,
  formatSearchQuery,
  generateId,
  getExpressionForResourceType,
  getReferenceString,
  globalSchema,
  gone,
  isResourceType,
  notFound,
  parseSearchRequest,
  splitSearchOnComma,
  validateResource,
} from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 1000;

// Search parameter types that Medplum's in-memory matcher evaluates. Others
// (number, quantity, composite, special) would silently match nothing there.
const MATCHABLE_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);

// Search filter codes that parseSearchRequest turns into filters but the
// in-memory matcher cannot evaluate.
function unsupportedFilter(code) {
  return code === '_has' || code.includes('.');
}

/**
 * Shared R4 search parameters carry one FHIRPath union over all their base types
 * (e.g. `patient` has 32 branches), and Medplum's in-memory matcher evaluates
 * the whole union for every stored resource. Narrow each type's copy to its own
 * branches, the way Medplum's server does, so searches stay fast.
 */
export function specializeSearchParameters() {
  for (const [type, info] of Object.entries(globalSchema.types)) {
    for (const [code, param] of Object.entries(info.searchParams ?? {})) {
      if ((param.base?.length ?? 0) > 1 && param.expression) {
        const expression = getExpressionForResourceType(type, param.expression);
        if (expression && expression !== param.expression) {
          info.searchParams[code] = { ...param, expression };
        }
      }
    }
  }
}

export class TestbedRepository extends MemoryRepository {
  constructor() {
    super();
    /** Absolute base URL of the FHIR endpoint, e.g. http://127.0.0.1:1234/fhir/R4 (set once listening). */
    this.baseUrl = '';
    /** `Type/id` -> { versionId, lastUpdated } of the delete. */
    this.deleted = new Map();
  }

  fullUrl(resourceType, id) {
    return this.baseUrl ? `${this.baseUrl}/${resourceType}/${id}` : `${resourceType}/${id}`;
  }

  // --- writes ------------------------------------------------------------

  async createResource(resource, options) {
    if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
      throw new OperationOutcomeError(badRequest('Resource must be a JSON object'));
    }
    if (!isResourceType(resource.resourceType)) {
      throw new OperationOutcomeError(badRequest(`Unknown resource type: ${resource.resourceType ?? '<EMPTY>'}`));
    }
    // Key order resourceType, id, meta first (as FHIR servers print them); the
    // server owns meta.versionId and meta.lastUpdated.
    const { resourceType, id, meta, ...rest } = JSON.parse(JSON.stringify(resource));
    const copy = { resourceType, id: id ?? this.generateId(), meta: meta ?? {}, ...rest };
    delete copy.meta.versionId;
    delete copy.meta.lastUpdated;
    validateResource(copy); // throws OperationOutcomeError (400) listing the issues
    const result = await super.createResource(copy, options);
    this.deleted.delete(`${result.resourceType}/${result.id}`);
    return result;
  }

  // updateResource and patchResource of MemoryRepository both end in createResource.

  async deleteResource(resourceType, id) {
    const key = `${resourceType}/${id}`;
    if (this.deleted.has(key)) {
      return; // deleting a deleted resource is a no-op
    }
    await super.deleteResource(resourceType, id);
    this.deleted.set(key, { versionId: generateId(), lastUpdated: new Date().toISOString() });
  }

  // --- reads -------------------------------------------------------------

  async readResource(resourceType, id) {
    try {
      return await super.readResource(resourceType, id);
    } catch (err) {
      if (this.deleted.has(`${resourceType}/${id}`)) {
        throw new OperationOutcomeError(gone);
      }
      throw err;
    }
  }

  versions(resourceType, id) {
    return this.history.get(resourceType)?.get(id) ?? [];
  }

  async readVersion(resourceType, id, versionId) {
    const version = this.versions(resourceType, id).find((v) => v.meta?.versionId === versionId);
    if (!version) {
      throw new OperationOutcomeError(notFound);
    }
    return JSON.parse(JSON.stringify(version));
  }

  async readHistory(resourceType, id, options) {
    const versions = this.versions(resourceType, id);
    if (!versions.length) {
      throw new OperationOutcomeError(notFound);
    }
    const url = `${resourceType}/${id}`;
    const all = versions.map((v, i) => ({
      fullUrl: this.fullUrl(resourceType, id),
      resource: JSON.parse(JSON.stringify(v)),
      request: { method: i === 0 ? 'POST' : 'PUT', url: i === 0 ? resourceType : url },
      response: {
        status: i === 0 ? '201' : '200',
        etag: `W/"${v.meta.versionId}"`,
        lastModified: v.meta.lastUpdated,
      },
    }));
    const del = this.deleted.get(url);
    if (del) {
      all.push({
        fullUrl: this.fullUrl(resourceType, id),
        request: { method: 'DELETE', url },
        response: { status: '204', etag: `W/"${del.versionId}"`, lastModified: del.lastUpdated },
      });
    }
    all.reverse(); // newest first
    const { offset, count } = checkPaging(options?.offset, options?.limit);
    const entry = all.slice(offset, offset + count);
    const self = `${this.fullUrl(resourceType, id)}/_history`;
    const link = [{ relation: 'self', url: pageUrl(self, offset, count, offset > 0 || count !== DEFAULT_PAGE_SIZE) }];
    if (offset + count < all.length) {
      link.push({ relation: 'next', url: pageUrl(self, offset + count, count, true) });
    }
    if (offset > 0) {
      link.push({ relation: 'previous', url: pageUrl(self, Math.max(0, offset - count), count, true) });
    }
    return {
      resourceType: 'Bundle',
      id: generateId(),
      meta: { lastUpdated: new Date().toISOString() },
      type: 'history',
      total: all.length,
      link,
      ...(entry.length ? { entry } : undefined),
    };
  }

  /** The resource types with at least one stored resource. */
  storedTypes() {
    return [...this.resources].filter(([, byId]) => byId.size).map(([type]) => type);
  }

  // --- search ------------------------------------------------------------

  async search(searchRequest) {
    const sr = { ...searchRequest };
    const { resourceType } = sr;
    if (resourceType === 'MultipleTypes' || sr.types?.length) {
      throw new OperationOutcomeError(badRequest('System-level search (_type) is not supported by this server'));
    }
    if (!isResourceType(resourceType)) {
      throw new OperationOutcomeError(notFound);
    }
    const params = globalSchema.types[resourceType]?.searchParams ?? {};
    const paging = checkPaging(sr.offset, sr.count);
    sr.offset = paging.offset;
    sr.count = paging.count;
    sr.filters = sr.filters?.map((f) => normalizeFilter(params, f));
    for (const rule of sr.sortRules ?? []) {
      if (!params[rule.code]) {
        throw new OperationOutcomeError(badRequest(`Unknown sort parameter: ${rule.code}`));
      }
    }
    for (const target of [...(sr.include ?? []), ...(sr.revInclude ?? [])]) {
      const p = globalSchema.types[target.resourceType]?.searchParams?.[target.searchParam];
      if (!isResourceType(target.resourceType) || p?.type !== 'reference') {
        throw new OperationOutcomeError(
          badRequest(`Invalid include target: ${target.resourceType}:${target.searchParam}`)
        );
      }
    }

    const bundle = await super.search(sr);
    const matches = (bundle.entry ?? []).map((e) => e.resource);
    const seen = new Set(matches.map(getReferenceString));
    const included = [];
    const add = (resource) => {
      const ref = getReferenceString(resource);
      if (!seen.has(ref)) {
        seen.add(ref);
        included.push(resource);
      }
    };
    for (const target of sr.include ?? []) {
      if (target.resourceType !== resourceType) {
        continue;
      }
      const expression = globalSchema.types[resourceType].searchParams[target.searchParam].expression;
      for (const resource of matches) {
        for (const value of evalFhirPath(expression, resource)) {
          const ref = typeof value?.reference === 'string' ? value.reference : undefined;
          if (!ref || !/^[A-Za-z]+\/[A-Za-z0-9\-.]{1,64}$/.test(ref)) {
            continue;
          }
          if (target.targetType && !ref.startsWith(target.targetType + '/')) {
            continue;
          }
          try {
            add(await super.readReference({ reference: ref }));
          } catch {
            // dangling reference: nothing to include
          }
        }
      }
    }
    if (matches.length) {
      for (const target of sr.revInclude ?? []) {
        const revBundle = await super.search(
          parseSearchRequest(target.resourceType, { [target.searchParam]: matches.map(getReferenceString).join(',') })
        );
        for (const e of revBundle.entry ?? []) {
          add(e.resource);
        }
      }
    }

    const entry = [
      ...matches.map((r) => ({ fullUrl: this.fullUrl(r.resourceType, r.id), resource: r, search: { mode: 'match' } })),
      ...included.map((r) => ({ fullUrl: this.fullUrl(r.resourceType, r.id), resource: r, search: { mode: 'include' } })),
    ];
    const base = this.baseUrl ? `${this.baseUrl}/${resourceType}` : resourceType;
    const link = [{ relation: 'self', url: base + formatSearchQuery(sr) }];
    const total = bundle.total ?? matches.length;
    if (sr.count > 0 && sr.offset + sr.count < total) {
      link.push({ relation: 'next', url: base + formatSearchQuery({ ...sr, offset: sr.offset + sr.count }) });
    }
    if (sr.offset > 0) {
      link.push({
        relation: 'previous',
        url: base + formatSearchQuery({ ...sr, offset: Math.max(0, sr.offset - (sr.count || DEFAULT_PAGE_SIZE)) }),
      });
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

  // --- transactions ------------------------------------------------------

  async withTransaction(callback) {
    const snapshot = this.snapshot();
    try {
      return await callback(undefined);
    } catch (err) {
      this.restore(snapshot);
      throw err;
    }
  }

  snapshot() {
    return {
      resources: [...this.resources].map(([type, byId]) => [type, new Map(byId)]),
      history: [...this.history].map(([type, byId]) => [type, new Map([...byId].map(([id, v]) => [id, [...v]]))]),
      deleted: new Map(this.deleted),
    };
  }

  restore(snapshot) {
    this.resources.clear();
    for (const [type, byId] of snapshot.resources) {
      this.resources.set(type, byId);
    }
    this.history.clear();
    for (const [type, byId] of snapshot.history) {
      this.history.set(type, byId);
    }
    this.deleted = snapshot.deleted;
  }
}

function checkPaging(offset, count) {
  if (offset !== undefined && (!Number.isInteger(offset) || offset < 0)) {
    throw new OperationOutcomeError(badRequest('_offset must be a non-negative integer'));
  }
  if (count !== undefined && (!Number.isInteger(count) || count < 0)) {
    throw new OperationOutcomeError(badRequest('_count must be a non-negative integer'));
  }
  return { offset: offset ?? 0, count: Math.min(count ?? DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE) };
}

function pageUrl(base, offset, count, withParams) {
  if (!withParams) {
    return base;
  }
  return `${base}?_count=${count}${offset ? `&_offset=${offset}` : ''}`;
}

function normalizeFilter(params, filter) {
  const { code } = filter;
  if (unsupportedFilter(code)) {
    throw new OperationOutcomeError(badRequest(`Chained and _has search parameters are not supported: ${code}`));
  }
  const param = params[code];
  if (!param) {
    throw new OperationOutcomeError(badRequest(`Unknown search parameter: ${code}`));
  }
  if (filter.operator === 'missing' || filter.operator === 'present') {
    return filter;
  }
  if (!MATCHABLE_TYPES.has(param.type)) {
    throw new OperationOutcomeError(
      badRequest(`Search parameter ${code} of type ${param.type} is not supported by this server`)
    );
  }
  if (param.type !== 'reference') {
    return filter;
  }
  // Reference values: accept `Type/id`, a bare `id` (any allowed target type), or an absolute URL.
  const targets = param.target ?? [];
  const values = splitSearchOnComma(filter.value).flatMap((v) => {
    const abs = /^https?:\/\/.*\/([A-Za-z]+\/[^/]+)$/.exec(v);
    if (abs) {
      return [abs[1]];
    }
    if (v && !v.includes('/') && targets.length) {
      return targets.map((t) => `${t}/${v}`);
    }
    return [v];
  });
  return { ...filter, value: values.map((v) => v.replaceAll(',', '\\,')).join(',') };
}
