/**
 * A reference relation service (README "Treatment relationship"), served beside the FHIR base
 * at `/_relations/`, so tests can check Portvagt's `http` relationship source against a real
 * service they steer:
 *
 *   GET /_relations/relationship?patient=<id>[&patient_identifier=<system|value>]
 *       [&professional=<system|value>]... [&organization=<system|value>]... [&fhir_user=<ref>]...
 *     -> {"patient": "<id>", "relationship": true, "basis": "..."} or {"patient": ..., "relationship": false}
 *   PUT /_relations/_table  {"relations": [{"patient", "professional" | "organization", "basis"}],
 *                            "mode": "normal" | "down" | "slow" | "wrong", "delay_ms": N}
 *   GET /_relations/_calls  -> {"calls": N}  (relationship questions answered so far)
 *
 * `down` answers 503, `slow` waits `delay_ms` first, `wrong` answers about another patient.
 */

let relations = [];
let mode = 'normal';
let delayMs = 0;
let calls = 0;

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
  return status;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** Answers a request below `/_relations/`; returns its status. */
export async function relationService(req, res, url) {
  const path = url.pathname.slice('/_relations'.length);
  if (path === '/_table' && req.method === 'PUT') {
    const body = JSON.parse((await readBody(req)) || '{}');
    relations = Array.isArray(body.relations) ? body.relations : [];
    mode = body.mode ?? 'normal';
    delayMs = Number(body.delay_ms ?? 0);
    calls = 0;
    return json(res, 200, { relations: relations.length, mode });
  }
  if (path === '/_calls' && req.method === 'GET') {
    return json(res, 200, { calls });
  }
  if (path !== '/relationship' || req.method !== 'GET') {
    return json(res, 404, { error: 'not found' });
  }
  calls += 1;
  if (mode === 'down') {
    return json(res, 503, { error: 'the relation service is down' });
  }
  if (mode === 'slow') {
    await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  const patient = url.searchParams.get('patient') ?? '';
  const patientIds = new Set([patient, ...url.searchParams.getAll('patient_identifier')]);
  const who = new Set([
    ...url.searchParams.getAll('professional'),
    ...url.searchParams.getAll('organization'),
    ...url.searchParams.getAll('fhir_user'),
  ]);
  if (mode === 'wrong') {
    return json(res, 200, { patient: `${patient}-other`, relationship: true, basis: 'mixed up' });
  }
  const found = relations.find(
    (relation) =>
      patientIds.has(relation.patient) && (who.has(relation.professional) || who.has(relation.organization)),
  );
  return json(
    res,
    200,
    found ? { patient, relationship: true, basis: found.basis ?? 'relation' } : { patient, relationship: false },
  );
}
