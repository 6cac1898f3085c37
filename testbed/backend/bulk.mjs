// Bulk Data Access $export (HL7 FHIR Bulk Data IG v2) for the testbed FHIR backend, as small as
// the flow allows:
//
// - kick-off: `GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`
//   with `Prefer: respond-async` (else 400): `202` with `Content-Location` naming the job's
//   status URL `[base]/_bulk/status/[job]`. `_type` limits the types; every other parameter
//   is ignored, as HAPI FHIR ignores what it does not know (the gateway must refuse what it
//   cannot vouch for).
// - status: the first poll answers `202` with `X-Progress` (so clients see one), later ones
//   `200` with the manifest (`output[].url` = `[base]/_bulk/file/[job]/[Type].ndjson`,
//   `requiresAccessToken: true`); `DELETE` cancels (`202`), an unknown job is `404`.
// - files: `application/fhir+ndjson`, one resource per line.
//
// The system level exports every resource of the types asked for (default: every type
// stored); the Patient and Group levels the Patient resources and their compartments
// (`patientEverything`), the Group level only the Group's `member` Patients.

import { randomUUID } from 'node:crypto';

import { patientEverything } from './everything.mjs';
import { MAX_PAGE_SIZE } from './repository.mjs';
import { HttpError, send } from './http-util.mjs';

const jobs = new Map(); // id -> { request, transactionTime, files: Map<type, string[]>, polled, cancelled }
const MAX_JOBS = 100;

/** Starts a job for the kick-off `segments` (`['$export']`, `['Patient', '$export']`, `['Group', id, '$export']`). */
export async function kickOff(repo, req, res, segments, url) {
  const prefer = String(req.headers.prefer ?? '');
  if (!prefer.split(',').some((p) => p.trim() === 'respond-async')) {
    throw new HttpError(400, 'invalid', '$export needs Prefer: respond-async');
  }
  const types = url.searchParams
    .getAll('_type')
    .flatMap((v) => v.split(','))
    .map((t) => t.trim())
    .filter(Boolean);
  let resources;
  if (segments.length === 1) {
    resources = await everyResource(repo, types);
  } else {
    const patients =
      segments[0] === 'Group' ? await groupMembers(repo, segments[1]) : await everyResource(repo, ['Patient']);
    resources = [];
    const seen = new Set();
    for (const patient of patients) {
      const bundle = await patientEverything(repo, patient, {});
      for (const entry of bundle.entry ?? []) {
        const r = entry.resource;
        const key = `${r.resourceType}/${r.id}`;
        if (entry.search?.mode === 'match' && !seen.has(key) && (!types.length || types.includes(r.resourceType))) {
          seen.add(key);
          resources.push(r);
        }
      }
    }
  }
  const files = new Map();
  for (const r of resources) {
    if (!files.has(r.resourceType)) {
      files.set(r.resourceType, []);
    }
    files.get(r.resourceType).push(JSON.stringify(r));
  }
  const id = randomUUID();
  if (jobs.size >= MAX_JOBS) {
    jobs.delete(jobs.keys().next().value);
  }
  jobs.set(id, { request: `${repo.baseUrl}/${segments.join('/')}${url.search}`, transactionTime: new Date().toISOString(), files, polled: false });
  return send(res, 202, '', { 'Content-Location': `${repo.baseUrl}/_bulk/status/${id}`, 'Content-Length': 0 });
}

/** `[base]/_bulk/status/[job]` (GET, DELETE) and `[base]/_bulk/file/[job]/[Type].ndjson` (GET). */
export function bulk(repo, req, res, method, segments) {
  const [, what, id, name] = segments;
  const job = jobs.get(id);
  if (!job) {
    throw new HttpError(404, 'not-found', 'No such export');
  }
  if (what === 'status' && segments.length === 3 && method === 'DELETE') {
    jobs.delete(id);
    return send(res, 202, '', { 'Content-Length': 0 });
  }
  if (what === 'status' && segments.length === 3 && method === 'GET') {
    if (!job.polled) {
      job.polled = true;
      return send(res, 202, '', { 'X-Progress': 'exporting', 'Retry-After': '1', 'Content-Length': 0 });
    }
    const output = [...job.files].map(([type, lines]) => ({
      type,
      url: `${repo.baseUrl}/_bulk/file/${id}/${type}.ndjson`,
      count: lines.length,
    }));
    return send(
      res,
      200,
      { transactionTime: job.transactionTime, request: job.request, requiresAccessToken: true, output, error: [] },
      { 'Content-Type': 'application/json' }
    );
  }
  const type = name?.endsWith('.ndjson') ? name.slice(0, -'.ndjson'.length) : undefined;
  if (what === 'file' && segments.length === 4 && method === 'GET' && job.files.has(type)) {
    const body = job.files.get(type).join('\n') + '\n';
    return send(res, 200, body, { 'Content-Type': 'application/fhir+ndjson' });
  }
  throw new HttpError(404, 'not-found', 'No such export file');
}

async function everyResource(repo, types) {
  const wanted = types.length ? types : repo.storedTypes();
  const found = [];
  for (const type of wanted) {
    for (let offset = 0; ; offset += MAX_PAGE_SIZE) {
      const bundle = await repo.search({ resourceType: type, count: MAX_PAGE_SIZE, offset });
      for (const entry of bundle.entry ?? []) {
        found.push(entry.resource);
      }
      if (offset + MAX_PAGE_SIZE >= (bundle.total ?? 0)) {
        break;
      }
    }
  }
  return found;
}

async function groupMembers(repo, id) {
  const group = await repo.readResource('Group', id);
  const patients = [];
  for (const member of group.member ?? []) {
    const m = /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(member.entity?.reference ?? '');
    if (m) {
      try {
        patients.push(await repo.readResource('Patient', m[1]));
      } catch {
        // a member that no longer exists is not exported
      }
    }
  }
  return patients;
}
