// A real OpenID Connect provider for the sign-in tests: `oidc-provider` (certified) on
// loopback, with one confidential client, PKCE required and an RSA key. Signing in is
// headless: the interaction route signs in the account named by `login_hint` and grants what
// was asked. Accounts are made up from their id: `alice@example.com` has that address,
// verified; `unverified:bob@example.com` has it unverified. Everyone is in the group `staff`;
// accounts whose name starts with `admin` also in `admins` (the `groups` scope and claim).
//
// Settings come from the environment: CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, ID_TOKEN_TTL
// (seconds). It prints `{"issuer": …}` once listening. `POST /test/rotate-keys` replaces the
// signing key (a new kid; flows under way are lost).

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

function account(id) {
  const verified = !id.startsWith('unverified:');
  const email = id.replace(/^unverified:/, '');
  return {
    accountId: id,
    async claims() {
      const name = email.split('@')[0];
      const groups = name.startsWith('admin') ? ['staff', 'admins'] : ['staff'];
      return { sub: id, email, email_verified: verified, name: `User ${name}`, groups };
    },
  };
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
}

function provider(issuer) {
  const instance = new Provider(issuer, {
    clients: [{
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [signingKey()] },
    pkce: { required: () => true },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    ttl: { IdToken: Number(process.env.ID_TOKEN_TTL || 3600) },
    findAccount: (ctx, id) => account(id),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: { devInteractions: { enabled: false } },
  });
  instance.on('server_error', (ctx, error) => console.error('server_error', error));
  return instance;
}

async function interact(current, req, res) {
  const details = await current.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    const accountId = details.params.login_hint;
    await current.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = new current.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await current.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  let current = provider(issuer);
  server.on('request', (req, res) => {
    if (req.method === 'POST' && req.url === '/test/rotate-keys') {
      current = provider(issuer);
      res.writeHead(204).end();
    } else if (req.url.startsWith('/interaction/')) {
      interact(current, req, res).catch((error) => {
        console.error('interaction failed', error);
        res.writeHead(500).end(String(error));
      });
    } else {
      current.callback()(req, res);
    }
  });
  console.log(JSON.stringify({ issuer }));
});
