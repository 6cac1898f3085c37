// Portvagt testbed authorization server.
//
// A small OAuth 2.0 / OpenID Connect authorization server built on the
// certified `oidc-provider` package, for Portvagt's integration tests and the
// demo. It issues client-credentials access tokens as ES256-signed JWTs
// (resource indicators, RFC 8707) and, for one extra resource, opaque tokens
// that can be introspected (RFC 7662). Signing keys live in memory only and can
// be rotated at runtime through a small admin endpoint. Optionally (with
// --client-ca) it also does mutual TLS (RFC 8705): `tls_client_auth` client
// authentication and certificate-bound access tokens (`cnf.x5t#S256`).
//
// Usage (see README.md):
//   node server.mjs --issuer-port 0 --tls-cert CERT.pem --tls-key KEY.pem \
//       [--audience https://127.0.0.1:8443/fhir] [--watch-stdin] \
//       [--client-ca CA.pem [--tls-client NAME=CERT.pem]...] \
//       [--citizen-client REDIRECT_URI]
//
// With --citizen-client it also signs citizens in (authorization code with PKCE, for the
// citizen page "Min log" as the public client `minlog`): a login form (oidc-provider's
// development interactions) that knows the demo's citizens, and access tokens that carry the
// SMART patient context (`patient`, `fhirUser`).
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

// The citizens the login form knows (the demo's sample patients) and the SMART scopes a
// citizen's app may be granted.
const CITIZENS = {
  'anne.hansen': { patient: 'pat-anne', name: 'Anne Hansen' },
  'bo.jensen': { patient: 'pat-bo', name: 'Bo Jensen' },
  'carla.nielsen': { patient: 'pat-carla', name: 'Carla Nielsen' },
};
const CITIZEN_SCOPES = ['fhirUser', 'launch/patient', 'patient/AuditEvent.rs', 'patient/Consent.crus'];

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
      + '[--audience URL] [--watch-stdin] [--client-ca CA.pem [--tls-client NAME=CERT.pem]...]\n',
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
      'client-ca': { type: 'string' },
      'tls-client': { type: 'string', multiple: true, default: [] },
      'citizen-client': { type: 'string' },
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

// --citizen-client REDIRECT_URI: the citizen page, a public client (no secret; PKCE).
let citizenClient;
if (args['citizen-client']) {
  let redirect;
  try {
    redirect = new URL(args['citizen-client']);
  } catch {
    usage('--citizen-client must be an absolute https URL');
  }
  if (redirect.protocol !== 'https:') usage('--citizen-client must be an https URL');
  citizenClient = {
    client_id: 'minlog',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [redirect.href],
    scope: ['openid', ...CITIZEN_SCOPES].join(' '),
    origin: redirect.origin,
  };
}

function log(message) {
  process.stderr.write(`authserver: ${message}\n`);
}

// ---------------------------------------------------------------------------
// Mutual TLS (optional)
// ---------------------------------------------------------------------------

/**
 * The subject DN of an X.509 certificate as an RFC 4514-style string, e.g.
 *   CN=Test System,serialNumber=UI:DK-O:G:6f2c...,organizationIdentifier=NTRDK-12345678,O=Region Test,C=DK
 *
 * oidc-provider 8.8.1 does not compare subject DNs itself: its tls_client_auth
 * code calls the `features.mTLS.certificateSubjectMatches` hook configured
 * below (the default throws). So both sides of the comparison are produced by
 * this one function: the registered `tls_client_auth_subject_dn` is computed
 * from the --tls-client certificate file at start-up and the presented
 * certificate is formatted the same way on every request, which makes the
 * exact string comparison independent of attribute naming or escaping.
 *
 * Node's `X509Certificate#subject` is OpenSSL's multi-line rendering: one RDN
 * per line, in certificate order (most significant first), short attribute
 * names (OpenSSL 3 knows `organizationIdentifier` and `serialNumber`), values
 * escaped per RFC 2253 (`,` `+` `"` `\` `<` `>` `;`, leading `#`/space,
 * trailing space) but non-ASCII characters left as UTF-8 (`Sjælland`), and
 * multi-valued RDNs joined with " + ". RFC 4514 wants the RDNs in reverse
 * order, comma-separated and `+` without spaces. For single-valued RDNs the
 * result is byte-for-byte what
 * `openssl x509 -noout -subject -nameopt RFC2253,-esc_msb` prints (plain
 * `-nameopt RFC2253` would write `Sj\C3\A6lland` instead).
 */
function subjectDn(cert) {
  return cert.subject
    .split('\n')
    .reverse()
    .map((rdn) => rdn.replaceAll(' + ', '+')) // an unescaped '+' only separates AVAs
    .join(',');
}

// --client-ca: PEM CA (bundle) that client certificates must chain to.
let clientCa;
if (args['client-ca'] !== undefined) {
  try {
    clientCa = fs.readFileSync(args['client-ca']);
    new crypto.X509Certificate(clientCa); // eslint-disable-line no-new
  } catch (err) {
    usage(`cannot read --client-ca: ${err.message}`);
  }
}

// --tls-client NAME=CERT.pem (repeatable): clients that authenticate with
// tls_client_auth and get certificate-bound tokens.
const tlsClients = [];
for (const spec of args['tls-client']) {
  if (!clientCa) usage('--tls-client requires --client-ca');
  const eq = spec.indexOf('=');
  const name = eq > 0 ? spec.slice(0, eq) : '';
  const file = eq > 0 ? spec.slice(eq + 1) : '';
  if (!name || !file) usage(`--tls-client must be NAME=CERTFILE, got ${JSON.stringify(spec)}`);
  if (CLIENTS.some((c) => c.client_id === name) || tlsClients.some((c) => c.client_id === name)) {
    usage(`--tls-client: duplicate client_id ${JSON.stringify(name)}`);
  }
  let cert;
  try {
    cert = new crypto.X509Certificate(fs.readFileSync(file)); // the first PEM block
  } catch (err) {
    usage(`cannot read --tls-client certificate ${file}: ${err.message}`);
  }
  tlsClients.push({
    client_id: name,
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: subjectDn(cert),
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: SMART_SCOPES.join(' '),
  });
}

// Sockets whose rejected client certificate has already been logged.
const loggedUnauthorized = new WeakSet();

/**
 * features.mTLS.getCertificate: the client certificate of the request's TLS
 * connection, but only if it verified against --client-ca. Returned as a
 * crypto.X509Certificate (oidc-provider 8.8.1 accepts that or a PEM string;
 * the x5t#S256 thumbprint is then SHA-256 over `cert.raw`, the DER bytes).
 * A certificate that did not verify (the server runs with
 * rejectUnauthorized: false so that certificate-less clients keep working)
 * counts as no certificate at all.
 */
function getCertificate(ctx) {
  const socket = ctx.socket;
  if (typeof socket?.getPeerX509Certificate !== 'function') return undefined;
  const cert = socket.getPeerX509Certificate(); // undefined if none was sent
  if (cert === undefined) return undefined;
  if (socket.authorized !== true) {
    if (!loggedUnauthorized.has(socket)) {
      loggedUnauthorized.add(socket);
      log(`ignoring client certificate ${subjectDn(cert)} that did not verify: ${socket.authorizationError}`);
    }
    return undefined;
  }
  return cert;
}

/**
 * features.mTLS configuration, used only when --client-ca is given.
 * certificateAuthorized and certificateSubjectMatches must be supplied too:
 * oidc-provider's defaults for them throw.
 */
const mtlsFeature = {
  enabled: true,
  certificateBoundAccessTokens: true,
  tlsClientAuth: true,
  selfSignedTlsClientAuth: false,
  getCertificate,
  certificateAuthorized: (ctx) => ctx.socket?.authorized === true,
  certificateSubjectMatches: (ctx, property, expected) => {
    // Only tls_client_auth_subject_dn is ever registered here.
    if (property !== 'tls_client_auth_subject_dn') return false;
    const cert = getCertificate(ctx);
    return cert !== undefined && subjectDn(cert) === expected;
  },
};

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
        scope: [...SMART_SCOPES, ...CITIZEN_SCOPES].join(' '),
        audience: resourceIndicator,
        accessTokenTTL: ACCESS_TOKEN_TTL_SECONDS,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256', kid: signingKid } },
      };
    }
    throw new errors.InvalidTarget(`unknown resource indicator: ${resourceIndicator}`);
  };

  const provider = new Provider(issuer, {
    clients: [...CLIENTS, ...tlsClients,
      ...(citizenClient ? [(({ origin, ...client }) => client)(citizenClient)] : [])],
    // oidc-provider's default client authentication methods, plus
    // tls_client_auth when mutual TLS is on (it must be listed here, not only
    // enabled in features.mTLS, or tls_client_auth clients fail validation).
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_jwt',
      'client_secret_post',
      'private_key_jwt',
      'none',
      ...(clientCa ? ['tls_client_auth'] : []),
    ],
    jwks: { keys: signingKeys },
    scopes: ['openid', ...SMART_SCOPES, ...CITIZEN_SCOPES],
    // The citizens the login form knows; anyone else is not signed in.
    findAccount: async (ctx, id) => (CITIZENS[id] ? {
      accountId: id,
      claims: async () => ({ sub: id, name: CITIZENS[id].name, fhirUser: `Patient/${CITIZENS[id].patient}` }),
    } : undefined),
    // The citizen page is first-party: what it asks for is granted without a consent screen.
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      if (!citizenClient || ctx.oidc.client.clientId !== citizenClient.client_id || !ctx.oidc.session.accountId) {
        return undefined;
      }
      const grant = new ctx.oidc.provider.Grant({ clientId: citizenClient.client_id, accountId: ctx.oidc.session.accountId });
      // The scopes are both OIDC scopes (listed in `scopes`) and the resource's scopes.
      grant.addOIDCScope(['openid', ...CITIZEN_SCOPES].join(' '));
      const resource = ctx.oidc.params.resource || audience;
      grant.addResourceScope(resource, CITIZEN_SCOPES.join(' '));
      await grant.save();
      return grant;
    },
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
      // The login form, only for citizens (--citizen-client); machine clients never see it.
      devInteractions: { enabled: Boolean(citizenClient) },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Any authenticated confidential client may introspect any token.
        allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: { enabled: true },
      mTLS: clientCa ? mtlsFeature : { enabled: false },
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
    // A citizen's token carries the SMART patient context.
    extraTokenClaims: async (ctx, token) => {
      if (token.kind === 'ClientCredentials') return { sub: token.clientId };
      const citizen = token.accountId && CITIZENS[token.accountId];
      return citizen ? { patient: citizen.patient, fhirUser: `Patient/${citizen.patient}` } : undefined;
    },
    // The citizen page exchanges its code from the browser: CORS for it, from its origin only.
    clientBasedCORS: (ctx, origin, client) => Boolean(citizenClient)
      && client.clientId === citizenClient.client_id && origin === citizenClient.origin,
  });

  provider.on('server_error', (ctx, err) => log(`server_error: ${err.stack || err}`));
  // error_detail is oidc-provider's internal reason (e.g. "certificate subject
  // value does not match the registered one"); clients only see the generic
  // error_description.
  const describe = (err) => `${err.message}${err.error_description ? ` (${err.error_description})` : ''}`
    + `${err.error_detail ? `: ${err.error_detail}` : ''}`;
  provider.on('grant.error', (ctx, err) => log(`token error: ${describe(err)}`));
  provider.on('introspection.error', (ctx, err) => log(`introspection error: ${describe(err)}`));
  provider.on('revocation.error', (ctx, err) => log(`revocation error: ${describe(err)}`));

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

// With --client-ca the server asks every client for a certificate but never
// fails the handshake over it: clients without one (or with one that does not
// verify) connect as before, and getCertificate() above only hands verified
// certificates to oidc-provider.
const tlsOptions = clientCa
  ? {
    cert: tlsCert, key: tlsKey, ca: clientCa, requestCert: true, rejectUnauthorized: false,
  }
  : { cert: tlsCert, key: tlsKey };

const server = https.createServer(tlsOptions, (req, res) => {
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
for (const client of tlsClients) {
  log(`tls_client_auth client ${client.client_id}: subject DN ${client.tls_client_auth_subject_dn}`);
}
log(`ready: issuer ${issuer}, audience ${audience}, signing kid ${signingKeys[0].kid}${clientCa ? ', mTLS on' : ''} (${elapsedMs.toFixed(0)} ms)`);
process.stdout.write(`${JSON.stringify({ issuer, port: boundPort })}\n`);
