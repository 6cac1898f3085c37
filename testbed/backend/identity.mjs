// The gateway's identity assertion, checked as a backend that records who acted would check it:
// `X-Portvagt-Identity` is a JWT signed ES256 by the gateway (typ portvagt-identity+jwt), whose
// key is published at the gateway's /.well-known/portvagt-identity-jwks.json. A write must carry
// one; any request that carries one must carry a good one: signature, issuer, audience,
// lifetime, the request it was made for (htm: the method, htu: the path and query), and a jti
// never seen before (a replayed assertion is refused). After a write, a Provenance names the
// actor the assertion verified.

import { createPublicKey, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import { HttpError } from './http-util.mjs';

const TYPE = 'portvagt-identity+jwt';
const MAX_LIFETIME = 300;
const LEEWAY = 30;

/** The verifier, or undefined when no --identity-jwks was given. */
export function identityVerifier(args) {
  const jwksUrl = args['identity-jwks'];
  if (jwksUrl === undefined) {
    return undefined;
  }
  const issuer = args['identity-issuer'];
  const audience = args['identity-audience'];
  if (issuer === undefined || audience === undefined) {
    throw new Error('--identity-jwks needs --identity-issuer and --identity-audience');
  }
  const ca = args['identity-ca'] === undefined ? undefined : readFileSync(args['identity-ca']);
  return new IdentityVerifier(jwksUrl, issuer, audience, ca);
}

class IdentityVerifier {
  constructor(jwksUrl, issuer, audience, ca) {
    this.jwksUrl = jwksUrl;
    this.issuer = issuer;
    this.audience = audience;
    this.ca = ca;
    this.keys = new Map();
    this.fetchedAt = 0;
    this.seen = new Map();
  }

  /** The verified claims, or undefined when there is no assertion and none is needed. */
  async check(req, write) {
    const value = req.headers['x-portvagt-identity'];
    if (value === undefined) {
      if (write) {
        throw refused('a write needs the gateway identity assertion');
      }
      return undefined;
    }
    const parts = String(value).split('.');
    if (parts.length !== 3) {
      throw refused('the identity assertion is not a JWS');
    }
    const header = decodeJson(parts[0]);
    const claims = decodeJson(parts[1]);
    if (header?.alg !== 'ES256' || header?.typ !== TYPE || typeof header?.kid !== 'string' || header.crit) {
      throw refused('the identity assertion header is not the gateway\'s');
    }
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    const signature = Buffer.from(parts[2], 'base64url');
    const verifies = (key) => key !== undefined && verify('sha256', signed, { key, dsaEncoding: 'ieee-p1363' }, signature);
    // A key replaced under the same kid (a rotation): fetched again, at most every 5 s.
    if (!verifies(await this.key(header.kid)) && !verifies(await this.key(header.kid, true))) {
      throw refused('the identity assertion signature does not verify');
    }
    const now = Math.floor(Date.now() / 1000);
    const audiences = Array.isArray(claims?.aud) ? claims.aud : [claims?.aud];
    if (claims?.iss !== this.issuer || !audiences.includes(this.audience)) {
      throw refused('the identity assertion is for another audience or from another issuer');
    }
    if (
      !Number.isInteger(claims.exp) ||
      !Number.isInteger(claims.iat) ||
      claims.exp <= now - LEEWAY ||
      claims.iat > now + LEEWAY ||
      claims.exp - claims.iat > MAX_LIFETIME
    ) {
      throw refused('the identity assertion has expired or lives too long');
    }
    if (claims.htm !== req.method || claims.htu !== req.url) {
      throw refused('the identity assertion was made for another request');
    }
    if (typeof claims.jti !== 'string' || claims.jti === '') {
      throw refused('the identity assertion has no jti');
    }
    this.forgetExpired(now);
    if (this.seen.has(claims.jti)) {
      throw refused('the identity assertion was used before');
    }
    this.seen.set(claims.jti, claims.exp + LEEWAY);
    return claims;
  }

  /** Drops what has expired, at most once a second (a full sweep). */
  forgetExpired(now) {
    if (now === this.sweptAt) {
      return;
    }
    this.sweptAt = now;
    for (const [jti, until] of this.seen) {
      if (until < now) {
        this.seen.delete(jti);
      }
    }
  }

  /** The key `kid`, fetching the JWK Set again (at most every 5 s) when it is unknown, or when
   * `again` (the one held did not verify). */
  async key(kid, again = false) {
    if ((again || !this.keys.has(kid)) && Date.now() - this.fetchedAt > 5000) {
      this.fetchedAt = Date.now();
      try {
        const set = JSON.parse(await fetchText(this.jwksUrl, this.ca));
        this.keys = new Map(
          (set.keys ?? [])
            .filter((jwk) => jwk.kty === 'EC' && jwk.crv === 'P-256' && typeof jwk.kid === 'string')
            .map((jwk) => [jwk.kid, createPublicKey({ key: jwk, format: 'jwk' })]),
        );
      } catch (err) {
        process.stderr.write(`[fhir-backend] identity keys: ${err.message}\n`);
      }
    }
    return this.keys.get(kid);
  }
}

function refused(message) {
  return new HttpError(401, 'security', message);
}

function decodeJson(part) {
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
}

function fetchText(url, ca) {
  const client = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const request = client.get(url, { ca, timeout: 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (text += chunk));
      res.on('end', () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`${url}: ${res.statusCode}`))));
    });
    request.on('timeout', () => request.destroy(new Error(`${url}: timed out`)));
    request.on('error', reject);
  });
}

/** The Provenance of a write by the verified `actor` (FHIR R4 Provenance, W3C PROV). */
export function provenance(resource, interaction, actor) {
  const who = { display: actor.name ?? actor.sub };
  if (actor.authorization_id) {
    who.identifier = { system: 'https://autregweb.sst.dk', value: actor.authorization_id };
  }
  const agent = {
    type: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' }],
    },
    who,
  };
  if (actor.organisation?.value) {
    agent.onBehalfOf = {
      identifier: { system: actor.organisation.system, value: actor.organisation.value },
      display: actor.organisation.name ?? undefined,
    };
  }
  const record = {
    resourceType: 'Provenance',
    // Unversioned, so a `Provenance?target=` search finds it on this engine.
    target: [{ reference: `${resource.resourceType}/${resource.id}` }],
    recorded: new Date().toISOString(),
    activity: {
      coding: [
        {
          system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation',
          code: interaction === 'create' ? 'CREATE' : 'UPDATE',
        },
      ],
    },
    agent: [agent],
  };
  const extension = [
    ['request-id', actor.request_id],
    ['client-id', actor.client_id],
  ]
    .filter(([, value]) => typeof value === 'string' && value !== '')
    .map(([name, value]) => ({ url: `https://portvagt.dk/fhir/StructureDefinition/${name}`, valueString: value }));
  if (extension.length) {
    record.extension = extension;
  }
  if (actor.purpose_of_use) {
    record.reason = [{ text: actor.purpose_of_use }];
  }
  return record;
}
