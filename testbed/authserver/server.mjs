// Portvagt testbed authorization server.
//
// A small OAuth 2.0 / OpenID Connect authorization server built on the
// certified `oidc-provider` package, for Portvagt's integration tests and the
// demo. It issues client-credentials access tokens as ES256-signed JWTs
// (resource indicators, RFC 8707) and, for one extra resource, opaque tokens
// that can be introspected (RFC 7662). Signing keys live in memory only and can
// be rotated at runtime through a small admin endpoint.
//
// Usage (see README.md):
//   node server.mjs --issuer-port 0 --tls-cert CERT.pem --tls-key KEY.pem \
//       [--audience https://127.0.0.1:8443/fhir] [--watch-stdin]
//
// Stdout carries exactly one line, printed when the server is ready:
//   {"issuer":"https://127.0.0.1:<port>","port":<port>}
// Everything else goes to stderr.

import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';

// ---------------------------------------------------------------------------
// Stdout is reserved for the single ready line. oidc-provider prints some
// notices with console.info, so route every console method to stderr before
// the library is loaded (it is imported dynamically below for that reason).
// ---------------------------------------------------------------------------
for (const method of ['log', 'info', 'debug']) {
  console[method] = (...args) => console.error(...args);
}

const startedAt = process.hrtime.bigint();

const HOST = '127.0.0.1';
const DEFAULT_AUDIENCE = 'https://127.0.0.1:8443/fhir';
const OPAQUE_RESOURCE = 'urn:portvagt:opaque';
const ACCESS_TOKEN_TTL_SECONDS = 300;

// SMART on FHIR v2 system scopes. They contain '/', '*' and '.', which is fine
// for oidc-provider: scope values are opaque strings split on spaces; the only
// requirement is that they are listed in the `scopes` configuration.
const SMART_SCOPES = [
  'system/*.rs',
  'system/*.cruds',
  'system/Patient.rs',
  'system/Observation.rs',
  'system/Observation.cruds',
];

const CLIENTS = [
  {
    // The machine client used by tests and the demo. Secret may be sent with
    // client_secret_basic or client_secret_post (oidc-provider accepts either
    // for a client registered with one of the two).
    client_id: 'portvagt-system',
    client_secret: 'portvagt-system-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: SMART_SCOPES.join(' '),
  },
  {
    // A resource-server client: no grants, only allowed to call the
    // introspection endpoint (what the gateway would use for opaque tokens).
    client_id: 'portvagt-gateway',
    client_secret: 'portvagt-gateway-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
];

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------
function usage(message) {
  if (message) process.stderr.write(`error: ${message}\n`);
  process.stderr.write(
    'usage: node server.mjs --issuer-port PORT --tls-cert CERT.pem --tls-key KEY.pem '
      + '[--audience URL] [--watch-stdin]\n',
  );
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'issuer-port': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      audience: { type: 'string', default: DEFAULT_AUDIENCE },
      'watch-stdin': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
if (args.help) usage();
if (args['issuer-port'] === undefined) usage('--issuer-port is required');
if (!args['tls-cert'] || !args['tls-key']) usage('--tls-cert and --tls-key are required');

const port = Number(args['issuer-port']);
if (!Number.isInteger(port) || port < 0 || port > 65535) usage('--issuer-port must be 0..65535');

const audience = args.audience;
try {
  const url = new URL(audience);
  if (url.hash) throw new Error('fragment');
} catch {
  usage('--audience must be an absolute URI without a fragment');
}

let tlsCert;
let tlsKey;
try {
  tlsCert = fs.readFileSync(args['tls-cert']);
  tlsKey = fs.readFileSync(args['tls-key']);
} catch (err) {
  usage(`cannot read TLS certificate/key: ${err.message}`);
}

function log(message) {
  process.stderr.write(`authserver: ${message}\n`);
}

// ---------------------------------------------------------------------------
// Signing keys (in memory; newest first)
// ---------------------------------------------------------------------------

// RFC 7638 JWK thumbprint of an EC public key, used as the kid.
function ecThumbprint({ crv, x, y }) {
  const canonical = JSON.stringify({ crv, kty: 'EC', x, y });
  return crypto.createHash('sha256').update(canonical).digest('base64url');
}

function generateSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    ...jwk, kid: ecThumbprint(jwk), alg: 'ES256', use: 'sig',
  };
}

/** Private JWKs, newest (the current signing key) first. */
const signingKeys = [generateSigningKey()];

// ---------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------
const { default: Provider, errors } = await import('oidc-provider');

// Cookie keys are only relevant to browser flows; keep them stable across
// provider re-creation.
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

/**
 * Builds a Provider for the given issuer whose JWKS holds every key generated
 * so far and which signs new JWT access tokens with the newest one.
 * Tokens and grants live in oidc-provider's in-memory adapter, which is
 * process-wide, so opaque tokens issued by an earlier instance stay
 * introspectable after a rotation.
 */
function buildProvider(issuer) {
  const signingKid = signingKeys[0].kid;

  const resourceServerInfo = (resourceIndicator) => {
    if (resourceIndicator === OPAQUE_RESOURCE) {
      return {
        scope: SMART_SCOPES.join(' '),
        audience: OPAQUE_RESOURCE,
        accessTokenTTL: ACCESS_TOKEN_TTL_SECONDS,
        accessTokenFormat: 'opaque',
      };
    }
    // The configured audience, and any other https resource (so tests can
    // obtain a well-formed token for the *wrong* audience), get JWTs.
    const url = new URL(resourceIndicator);
    if (resourceIndicator === audience || url.protocol === 'https:') {
      return {
        scope: SMART_SCOPES.join(' '),
        audience: resourceIndicator,
        accessTokenTTL: ACCESS_TOKEN_TTL_SECONDS,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256', kid: signingKid } },
      };
    }
    throw new errors.InvalidTarget(`unknown resource indicator: ${resourceIndicator}`);
  };

  const provider = new Provider(issuer, {
    clients: CLIENTS,
    jwks: { keys: signingKeys },
    scopes: ['openid', ...SMART_SCOPES],
    clientDefaults: {
      grant_types: ['client_credentials'],
      id_token_signed_response_alg: 'ES256',
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    enabledJWA: {
      idTokenSigningAlgValues: ['ES256'],
      introspectionSigningAlgValues: ['ES256'],
      userinfoSigningAlgValues: ['ES256'],
      authorizationSigningAlgValues: ['ES256'],
    },
    cookies: { keys: cookieKeys },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Any authenticated confidential client may introspect any token.
        allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => audience,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => resourceServerInfo(resourceIndicator),
      },
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || ACCESS_TOKEN_TTL_SECONDS,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL
        || ACCESS_TOKEN_TTL_SECONDS,
    },
    // Client-credentials tokens have no end-user; oidc-provider already puts
    // sub = client_id into JWT access tokens. Carry it as an extra claim so
    // introspection responses for opaque tokens have the same `sub`.
    extraTokenClaims: async (ctx, token) => (
      token.kind === 'ClientCredentials' ? { sub: token.clientId } : undefined
    ),
    clientBasedCORS: () => false,
  });

  provider.on('server_error', (ctx, err) => log(`server_error: ${err.stack || err}`));
  provider.on('grant.error', (ctx, err) => log(`token error: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}`));
  provider.on('introspection.error', (ctx, err) => log(`introspection error: ${err.message}`));

  return { provider, handler: provider.callback() };
}

// ---------------------------------------------------------------------------
// HTTPS server: /admin/* handled here, everything else by the current Provider
// ---------------------------------------------------------------------------
let current; // { provider, handler }
let issuer;

function sendJson(res, status, body) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(payload),
    'cache-control': 'no-store',
  });
  res.end(payload);
}

function handleAdmin(req, res, pathname) {
  if (pathname === '/admin/healthz') {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return sendJson(res, 405, { error: 'method_not_allowed' });
    }
    return sendJson(res, 200, { status: 'ok', kid: signingKeys[0].kid });
  }
  if (pathname === '/admin/rotate') {
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return sendJson(res, 405, { error: 'method_not_allowed' });
    }
    req.resume(); // ignore any request body
    const key = generateSigningKey();
    signingKeys.unshift(key);
    try {
      current = buildProvider(issuer);
    } catch (err) {
      signingKeys.shift();
      log(`rotation failed: ${err.stack || err}`);
      return sendJson(res, 500, { error: 'rotation_failed' });
    }
    log(`rotated signing key: new kid ${key.kid} (${signingKeys.length} keys in JWKS)`);
    return sendJson(res, 200, { kid: key.kid });
  }
  return sendJson(res, 404, { error: 'not_found' });
}

const server = https.createServer({ cert: tlsCert, key: tlsKey }, (req, res) => {
  let pathname;
  try {
    pathname = new URL(req.url, 'https://localhost').pathname;
  } catch {
    return sendJson(res, 400, { error: 'invalid_request' });
  }
  if (pathname === '/admin' || pathname.startsWith('/admin/')) {
    return handleAdmin(req, res, pathname);
  }
  if (!current) {
    return sendJson(res, 503, { error: 'temporarily_unavailable' });
  }
  return current.handler(req, res);
});

server.on('tlsClientError', (err) => log(`TLS client error: ${err.message}`));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, () => {
    server.off('error', reject);
    resolve();
  });
}).catch((err) => {
  log(`cannot listen on ${HOST}:${port}: ${err.message}`);
  process.exit(1);
});

const boundPort = server.address().port;
issuer = `https://${HOST}:${boundPort}`;
current = buildProvider(issuer);

// ---------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------
let shuttingDown = false;
function shutdown(reason) {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`shutting down (${reason})`);
  server.close();
  server.closeAllConnections();
  process.exit(0);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

if (args['watch-stdin']) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.on('data', () => {}); // drain; only EOF matters
  process.stdin.resume();
}

const elapsedMs = Number(process.hrtime.bigint() - startedAt) / 1e6;
log(`ready: issuer ${issuer}, audience ${audience}, signing kid ${signingKeys[0].kid} (${elapsedMs.toFixed(0)} ms)`);
process.stdout.write(`${JSON.stringify({ issuer, port: boundPort })}\n`);
