// HTTP plumbing for the testbed FHIR backend: OperationOutcome errors, body
// reading with a size limit, content types and query-string helpers.

import { isResourceType } from '@medplum/core';

export const BODY_LIMIT = 16 * 1024 * 1024;
export const FHIR_JSON = 'application/fhir+json; charset=utf-8';
export const FORM_TYPE = 'application/x-www-form-urlencoded';
const JSON_TYPES = new Set(['', 'application/fhir+json', 'application/json', 'application/json-patch+json']);

export function outcome(code, text, severity = 'error') {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

export class HttpError extends Error {
  constructor(status, code, text) {
    super(text);
    this.status = status;
    this.outcome = outcome(code, text);
  }
}

export function send(res, status, body, headers = {}) {
  const payload = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
  return status;
}

export function readBody(req) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    const tooLarge = () => new HttpError(413, 'too-costly', `Request body exceeds ${BODY_LIMIT} bytes`);
    if (declared > BODY_LIMIT) {
      req.resume();
      reject(tooLarge());
      return;
    }
    const chunks = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk) => {
      if (failed) {
        return;
      }
      size += chunk.length;
      if (size > BODY_LIMIT) {
        failed = true;
        reject(tooLarge());
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => !failed && resolve(Buffer.concat(chunks)));
    req.on('error', (err) => !failed && reject(err));
  });
}

export function mediaType(req) {
  return (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
}

export function parseJsonBody(req, raw) {
  const type = mediaType(req);
  if (!JSON_TYPES.has(type)) {
    throw new HttpError(415, 'not-supported', `Unsupported Content-Type: ${type} (use application/fhir+json)`);
  }
  if (raw.length === 0) {
    return undefined;
  }
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, 'structure', `Malformed JSON body: ${err.message}`);
  }
}

export function httpDate(iso) {
  const d = iso ? new Date(iso) : undefined;
  return d && !Number.isNaN(d.getTime()) ? d.toUTCString() : undefined;
}

/** `subject:Patient=123` -> `subject=Patient/123` (Medplum's parser drops type modifiers). */
export function normalizeQuery(resourceType, pairs) {
  return pairs.map(([key, value]) => {
    const [code, modifier] = key.split(':');
    if (modifier && isResourceType(modifier) && isResourceType(resourceType)) {
      return [code, value.split(',').map((v) => (v.includes('/') ? v : `${modifier}/${v}`)).join(',')];
    }
    return [key, value];
  });
}

export function pairsToRecord(pairs) {
  const record = Object.create(null);
  for (const [key, value] of pairs) {
    const prev = record[key];
    record[key] = prev === undefined ? value : [].concat(prev, value);
  }
  return record;
}
