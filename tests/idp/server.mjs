// Test OpenID provider for Portcullis: the certified `oidc-provider` package on loopback, configured from a JSON
// file (argv[2]), with a plain login form, automatic consent, strict client authentication (like Authelia 4.38+)
// and test controls under /_test/. Started by tests/it/idp.rs; see tests/idp/README.md for the setup schema.
//
// stdout: exactly one line `{"issuer":"http://127.0.0.1:NNNN"}` once ready. Everything else goes to stderr.
// Exits when stdin closes, on SIGTERM/SIGINT, or on a fatal error.

import { createPrivateKey, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { isIP } from 'node:net';
import { lookup as dnsLookup } from 'node:dns';
import { inspect } from 'node:util';

import Provider from 'oidc-provider';

const log = (...args) => process.stderr.write(`[idp] ${args.map((a) => (typeof a === 'string' ? a : inspect(a, { depth: 4 }))).join(' ')}\n`);

// ---------------------------------------------------------------------------------------------------------------
// Lifetime: never outlive the test that started us.
function shutdown(reason, code = 0) {
  log(`exiting: ${reason}`);
  process.exit(code);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.stdin.on('end', () => shutdown('stdin closed'));
process.stdin.on('close', () => shutdown('stdin closed'));
process.stdin.on('error', () => shutdown('stdin error'));
process.stdin.resume();
process.on('uncaughtException', (err) => { log('uncaught exception', err); shutdown('uncaught exception', 1); });
process.on('unhandledRejection', (err) => { log('unhandled rejection', err); });

// ---------------------------------------------------------------------------------------------------------------
// Setup
const t0 = Date.now();
const stage = (what) => { if (process.env.IDP_TRACE_STARTUP) log(`startup +${Date.now() - t0}ms: ${what}`); };
stage('module loaded');
const setupPath = process.argv[2];
if (!setupPath) {
  log('usage: node server.mjs <setup.json>');
  process.exit(2);
}
const setup = JSON.parse(readFileSync(setupPath, 'utf8'));
const clientsSetup = setup.clients ?? [];
const users = new Map();
for (const u of setup.users ?? []) {
  if (!u.id || typeof u.password !== 'string') throw new Error(`user needs id and password: ${JSON.stringify(u)}`);
  users.set(u.id, { groups: [], ...u });
}
const rotateRefreshTokens = setup.rotate_refresh_tokens ?? true;
const backchannelCaFile = setup.backchannel_ca_file ?? process.env.IDP_BACKCHANNEL_CA_FILE;
const backchannelInsecure = setup.backchannel_insecure_loopback ?? process.env.IDP_BACKCHANNEL_INSECURE === '1';
const hostOverrides = setup.host_overrides ?? {};

// Registered auth method per client, for the strict client authentication middleware.
const registeredAuthMethod = new Map(
  clientsSetup.map((c) => [c.client_id, c.token_endpoint_auth_method ?? 'client_secret_basic']),
);

const stats = {};
const bump = (name) => { stats[name] = (stats[name] ?? 0) + 1; };

// ---------------------------------------------------------------------------------------------------------------
// Keys: RS256 (first, the default for ID tokens) and ES256, fresh per run.
// Generated as DER and re-imported before the JWK export: exporting the KeyObject that generateKeyPairSync returns
// can deadlock on Node 20 when GC collects the key generation job during the export (seen in tests: the main
// thread stuck in ~KeyGenJob under ExportJWK).
function jwk(kty, opts, alg) {
  const { privateKey } = generateKeyPairSync(kty, {
    ...opts,
    privateKeyEncoding: { type: 'pkcs8', format: 'der' },
    publicKeyEncoding: { type: 'spki', format: 'der' },
  });
  const key = createPrivateKey({ key: privateKey, format: 'der', type: 'pkcs8' });
  return { ...key.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${randomUUID().slice(0, 8)}`, alg, use: 'sig' };
}
const jwks = {
  keys: [
    jwk('rsa', { modulusLength: 2048 }, 'RS256'),
    jwk('ec', { namedCurve: 'P-256' }, 'ES256'),
  ],
};
stage('keys generated');

// ---------------------------------------------------------------------------------------------------------------
// Outgoing requests (back-channel logout): oidc-provider refuses special-use addresses (SSRF protection), which
// includes loopback. For loopback targets (or hosts mapped in host_overrides) use our own dispatcher that may
// trust a test CA or, when asked, skip certificate verification.
function isLoopbackHost(hostname) {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}
let loopbackDispatcher;
function getLoopbackDispatcher() {
  if (loopbackDispatcher === undefined) {
    // The undici that backs globalThis.fetch; a dispatcher from another undici copy would not be accepted.
    const Agent = (globalThis[Symbol.for('undici.globalDispatcher.2')]
      ?? globalThis[Symbol.for('undici.globalDispatcher.1')])?.constructor;
    if (!Agent) throw new Error('cannot find the undici Agent behind fetch');
    const connect = {
      lookup(hostname, options, callback) {
        const mapped = hostOverrides[hostname];
        if (mapped) {
          const family = isIP(mapped) || 4;
          if (options?.all) return callback(null, [{ address: mapped, family }]);
          return callback(null, mapped, family);
        }
        return dnsLookup(hostname, options, callback);
      },
    };
    if (backchannelCaFile) connect.ca = [readFileSync(backchannelCaFile)];
    if (backchannelInsecure) connect.rejectUnauthorized = false;
    loopbackDispatcher = new Agent({ connect });
  }
  return loopbackDispatcher;
}
async function outgoingFetch(url, options) {
  const { hostname } = new URL(url);
  if (isLoopbackHost(hostname) || hostOverrides[hostname]) {
    // eslint-disable-next-line no-param-reassign
    options.dispatcher = getLoopbackDispatcher();
  }
  return globalThis.fetch(url, options);
}

// ---------------------------------------------------------------------------------------------------------------
// Accounts
function findAccount(_ctx, id) {
  const user = users.get(id);
  if (!user) return undefined;
  return {
    accountId: id,
    async claims() {
      // Read at every call: a group change via /_test shows at the next refresh / userinfo.
      return {
        sub: id,
        name: user.name ?? id,
        preferred_username: user.preferred_username ?? id,
        email: user.email ?? `${id}@example.test`,
        email_verified: true,
        groups: [...(user.groups ?? [])],
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// HTML
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}
function loginPage(uid, { error, login = '', clientId } = {}) {
  return page('Sign in', `${clientId ? `<p>to continue to <b>${esc(clientId)}</b></p>\n` : ''}${error ? `<p class="error">${esc(error)}</p>\n` : ''}<form method="post" action="/interaction/${esc(uid)}/login">
<input name="login" value="${esc(login)}" autocomplete="username">
<input name="password" type="password" autocomplete="current-password">
<button type="submit">Sign in</button>
</form>`);
}

// ---------------------------------------------------------------------------------------------------------------
// Small Koa helpers
function readRawBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 64 * 1024) { reject(new Error('body too large')); req.pause(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function jsonError(ctx, status, error, description) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.set('cache-control', 'no-store');
  ctx.body = JSON.stringify({ error, error_description: description });
}

// ---------------------------------------------------------------------------------------------------------------
// Start listening first (port 0), then build the provider with the real issuer.
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const server = createServer((req, res) => handler(req, res));
server.on('error', (err) => { log('server error', err); shutdown('server error', 1); });
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;
stage(`listening on port ${port}`);

const ttlOr = (secs, dflt) => (Number.isFinite(secs) && secs > 0 ? secs : dflt);

const provider = new Provider(issuer, {
  clients: clientsSetup.map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...c,
  })),
  findAccount,
  jwks,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Put the scope claims (groups!) into the ID token too, not only into userinfo.
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  pkce: {
    // S256 is the only method oidc-provider supports; required for public clients, optional for confidential ones.
    required: (_ctx, client) => client.clientAuthMethod === 'none',
  },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'none'],
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // Automatic confirmation: instead of a "do you want to sign out?" page, send the browser straight on to
      // /session/end/auto (handled below), which confirms with logout=yes (ends the whole OP session).
      async logoutSource(ctx) {
        const { secret } = ctx.oidc.session.state;
        ctx.status = 303;
        ctx.redirect(`${issuer}/session/end/auto?xsrf=${encodeURIComponent(secret)}`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.type = 'html';
        ctx.body = page('Signed out', '<p>You are signed out.</p>');
      },
    },
  },
  // Refresh tokens for every code flow of a client allowed the refresh_token grant, offline_access or not.
  // They end with the OP session (logout) unless offline_access was granted.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => rotateRefreshTokens,
  ttl: {
    AccessToken: ttlOr(setup.access_token_ttl_secs, 3600),
    IdToken: ttlOr(setup.id_token_ttl_secs, 3600),
    AuthorizationCode: 60,
    RefreshToken: ttlOr(setup.refresh_token_ttl_secs, 14 * 24 * 3600),
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  interactions: {
    url: (_ctx, interaction) => `${issuer}/interaction/${interaction.uid}`,
  },
  fetch: outgoingFetch,
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<p><b>${esc(k)}</b>: <span class="${esc(k)}">${esc(v)}</span></p>`).join('\n'));
  },
});

// Log what happens so a failing test shows why.
for (const ev of ['server_error', 'grant.error', 'authorization.error', 'end_session.error', 'userinfo.error',
  'introspection.error', 'revocation.error', 'jwks.error', 'discovery.error']) {
  provider.on(ev, (ctx, err) => log(`${ev}: ${err?.error ?? ''} ${err?.error_description ?? err?.message ?? ''}`.trim(),
    ...(ev === 'server_error' ? [err] : [])));
}
provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
  bump('backchannel_logout_ok');
  log(`back-channel logout delivered to ${client.clientId} (sub=${accountId}, sid=${sid})`);
});
provider.on('backchannel.error', (_ctx, err, client, accountId, sid) => {
  bump('backchannel_logout_error');
  log(`back-channel logout to ${client.clientId} failed (sub=${accountId}, sid=${sid}):`, err?.cause ?? err);
});

// ---------------------------------------------------------------------------------------------------------------
// Middleware in front of oidc-provider's router (provider.use inserts before it, in order).

// 1. Request counters for /_test/stats.
const statNames = new Map([
  ['/token', 'token'], ['/me', 'userinfo'], ['/jwks', 'jwks'], ['/auth', 'auth'],
  ['/.well-known/openid-configuration', 'discovery'], ['/.well-known/oauth-authorization-server', 'discovery'],
  ['/session/end', 'end_session'], ['/token/revocation', 'revocation'], ['/token/introspection', 'introspection'],
]);
provider.use(async (ctx, next) => {
  if (ctx.method !== 'OPTIONS') {
    const name = statNames.get(ctx.path)
      ?? (ctx.path.startsWith('/interaction/') ? 'interaction' : undefined)
      ?? (ctx.path.startsWith('/auth/') ? 'auth_resume' : undefined);
    if (name) bump(name);
  }
  await next();
  if (!ctx.path.startsWith('/_test/')) log(`${ctx.method} ${ctx.path} -> ${ctx.status}`);
});

// 2. Test controls.
provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/_test/')) return next();
  const groupsRoute = /^\/_test\/users\/([^/]+)\/groups$/.exec(ctx.path);
  if (groupsRoute && ctx.method === 'POST') {
    const id = decodeURIComponent(groupsRoute[1]);
    const user = users.get(id);
    if (!user) return jsonError(ctx, 404, 'not_found', `no user ${id}`);
    let groups;
    try { groups = JSON.parse(await readRawBody(ctx.req)); } catch { groups = undefined; }
    if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) {
      return jsonError(ctx, 400, 'invalid_request', 'body must be a JSON array of strings');
    }
    user.groups = groups;
    log(`groups of ${id} set to ${JSON.stringify(groups)}`);
    ctx.type = 'application/json';
    ctx.body = JSON.stringify({ id, groups });
    return undefined;
  }
  if (ctx.path === '/_test/stats' && ctx.method === 'GET') {
    ctx.type = 'application/json';
    ctx.set('cache-control', 'no-store');
    ctx.body = JSON.stringify({
      token: 0, userinfo: 0, jwks: 0, auth: 0, discovery: 0, end_session: 0, ...stats,
    });
    return undefined;
  }
  if (ctx.path === '/_test/stats/reset' && ctx.method === 'POST') {
    for (const k of Object.keys(stats)) delete stats[k];
    ctx.status = 204;
    return undefined;
  }
  return jsonError(ctx, 404, 'not_found', `no test control ${ctx.method} ${ctx.path}`);
});

// 3. Strict client authentication: the method actually used must be the client's registered
//    token_endpoint_auth_method (oidc-provider alone accepts basic and post interchangeably).
const strictPaths = new Set(['/token', '/token/introspection', '/token/revocation']);
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !strictPaths.has(ctx.path)) return next();
  const raw = ctx.is('application/x-www-form-urlencoded') ? await readRawBody(ctx.req) : undefined;
  if (raw !== undefined) {
    // oidc-provider reads an already consumed body from req.body (it logs one warning about it).
    ctx.req.body = raw;
  }
  const form = new URLSearchParams(raw ?? '');
  const authz = ctx.get('authorization');
  let used;
  let clientId;
  if (/^basic /i.test(authz)) {
    used = 'client_secret_basic';
    try {
      const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
      clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')).replace(/\+/g, '%20'));
    } catch { clientId = undefined; }
  } else if (form.has('client_assertion')) {
    used = 'private_key_jwt';
    clientId = form.get('client_id') ?? undefined;
  } else if (form.has('client_secret')) {
    used = 'client_secret_post';
    clientId = form.get('client_id') ?? undefined;
  } else {
    used = 'none';
    clientId = form.get('client_id') ?? undefined;
  }
  const registered = clientId === undefined ? undefined : registeredAuthMethod.get(clientId);
  if (registered !== undefined && registered !== used) {
    bump('strict_auth_rejected');
    log(`strict client auth: ${clientId} registered ${registered}, request used ${used} -> invalid_client`);
    if (used === 'client_secret_basic') ctx.set('www-authenticate', `Basic realm="${issuer}", error="invalid_client"`);
    return jsonError(ctx, 401, 'invalid_client', 'Client authentication failed (e.g., unknown client, no client '
      + 'authentication included, or unsupported authentication method). The request was determined to be using '
      + `'token_endpoint_auth_method' method '${used}', however the OAuth 2.0 client registration does not allow `
      + `this method (client '${clientId}' is registered with '${registered}').`);
  }
  return next();
});

// 4. Automatic logout confirmation: GET /session/end/auto?xsrf=... becomes the POST /session/end/confirm that the
//    usual confirmation page would submit (xsrf + logout=yes).
provider.use(async (ctx, next) => {
  if (ctx.method !== 'GET' || ctx.path !== '/session/end/auto') return next();
  const xsrf = String(ctx.query.xsrf ?? '');
  await readRawBody(ctx.req); // drain (empty) so oidc-provider uses the body below
  const body = new URLSearchParams({ xsrf, logout: 'yes' }).toString();
  ctx.req.body = body;
  ctx.req.headers['content-type'] = 'application/x-www-form-urlencoded';
  ctx.req.headers['content-length'] = String(Buffer.byteLength(body));
  ctx.method = 'POST';
  ctx.path = '/session/end/confirm';
  return next();
});

// 5. Login form and automatic consent.
async function grantEverything(interaction, accountId) {
  const { params, prompt: { details } } = interaction;
  let grant = interaction.grantId ? await provider.Grant.find(interaction.grantId) : undefined;
  if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
  grant.addOIDCScope(params.scope ?? 'openid');
  if (details?.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details?.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details?.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

provider.use(async (ctx, next) => {
  const m = /^\/interaction\/([^/]+)(\/login)?$/.exec(ctx.path);
  if (!m) return next();
  const [, uid, isLogin] = m;
  ctx.set('cache-control', 'no-store');
  let interaction;
  try {
    interaction = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', `<p class="error">${esc(err.error_description ?? err.message)}</p>`);
    return undefined;
  }
  if (interaction.uid !== uid) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', '<p class="error">interaction mismatch</p>');
    return undefined;
  }
  const clientId = interaction.params.client_id;

  if (!isLogin && ctx.method === 'GET') {
    if (interaction.prompt.name === 'login') {
      ctx.type = 'html';
      ctx.body = loginPage(uid, { clientId });
      return undefined;
    }
    // Any other prompt (consent for a new client of an existing session): grant automatically.
    const accountId = interaction.session?.accountId;
    const grantId = await grantEverything(interaction, accountId);
    ctx.respond = false;
    await provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return undefined;
  }

  if (isLogin && ctx.method === 'POST') {
    const form = new URLSearchParams(await readRawBody(ctx.req));
    const login = form.get('login') ?? '';
    const password = form.get('password') ?? '';
    const user = users.get(login);
    if (!user || user.password !== password) {
      log(`login failed for ${JSON.stringify(login)}`);
      bump('login_failed');
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(uid, { error: 'Invalid login or password.', login, clientId });
      return undefined;
    }
    bump('login_ok');
    const grantId = await grantEverything(interaction, login);
    ctx.respond = false;
    await provider.interactionFinished(ctx.req, ctx.res, {
      login: { accountId: login },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
    return undefined;
  }
  ctx.status = 405;
  return undefined;
});

handler = provider.callback();

// Ready.
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
log(`listening on ${issuer} with clients ${[...registeredAuthMethod].map(([id, m]) => `${id}(${m})`).join(', ')} and users ${[...users.keys()].join(', ')}`);
