#!/usr/bin/env bash
# The README's walkthrough, as a script that CI runs against a fresh server: every step of
# "Try it" works as written. Needs curl and python3; buf (`npx @bufbuild/buf`) for gRPC.
set -euo pipefail
URL=${KEEL_URL:-http://localhost:8000}
KEEL=${KEEL:-"cargo run --release --"}   # the keel binary, for the operator command
BUF=${BUF:-"npx --yes @bufbuild/buf"}
# helpers: a JSON field of the answer, a POST with a JSON body, the token of the newest link
# mailed to an address (from the development outbox, which superusers read)
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
post() { curl -s --fail-with-body -w '\n' -X POST "$URL$1" -H 'content-type: application/json' "${@:2}"; }
link_token() {  # waits for the message: some are prepared after the answer
  for _ in $(seq 50); do
    curl -s --fail-with-body -w '\n' "$URL/api/v1/admin/outbox" -H "authorization: Bearer $ROOT" |
      python3 -c "import json,re,sys; m=[x for x in json.load(sys.stdin)['messages'] if x['to']=='$1' and '$2?token=' in x['text']]; m.sort(key=lambda x: x['created_at']); print(re.search(r'token=([A-Za-z0-9_-]+)', m[-1]['text']).group(1))" 2>/dev/null && return
    sleep 0.1
  done
  return 1
}
totp_code() {  # the current code of a base32 secret, as an authenticator app shows it
  python3 -c "import base64,hmac,struct,time; k=base64.b32decode('$1'+'='*(-len('$1')%8)); h=hmac.digest(k,struct.pack('>Q',int(time.time())//30),'sha1'); o=h[-1]&15; print('%06d'%((struct.unpack('>I',h[o:o+4])[0]&0x7fffffff)%10**6))"
}

# Sign up, sign in (JSON, or the OAuth2 password form that Swagger UI's Authorize sends)
post /api/v1/auth/register -d '{"email":"a@example.com","password":"Str0ng!Passw0rd","full_name":"A"}'
post /api/v1/auth/login -d '{"email":"a@example.com","password":"Str0ng!Passw0rd"}' > login.json
curl -s --fail-with-body -w '\n' -X POST "$URL/api/v1/auth/token" -d 'username=a@example.com&password=Str0ng!Passw0rd'
TOKEN=$(field '["access_token"]' < login.json)
curl -s --fail-with-body -w '\n' "$URL/api/v1/users/me" -H "authorization: Bearer $TOKEN"
post /api/v1/auth/refresh -d "{\"refresh_token\":\"$(field '["refresh_token"]' < login.json)\"}"
curl -s --fail-with-body -w '\n' "$URL/api/v1/sessions" -H "authorization: Bearer $TOKEN"
curl -s --fail-with-body -w '\n' -X DELETE "$URL/api/v1/sessions/all?keep_current=true" -H "authorization: Bearer $TOKEN"
curl -s --fail-with-body -w '\n' -X PUT "$URL/api/v1/users/me/password" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' \
  -d '{"current_password":"Str0ng!Passw0rd","new_password":"N3w!Passw0rd"}'

# API keys need a verified address. Without KEEL_SMTP_URL the verification link waits in the
# development outbox, which superusers read
KEEL_SUPERUSER_PASSWORD='R00t!Passw0rd' $KEEL admin create-superuser --email root@example.com
ROOT=$(post /api/v1/auth/login -d '{"email":"root@example.com","password":"R00t!Passw0rd"}' | field '["access_token"]')
post /api/v1/auth/verify-email -d "{\"token\":\"$(link_token a@example.com /verify-email)\"}"
# the first proof of an address ends the sessions opened before it: sign in again
TOKEN=$(post /api/v1/auth/login -d '{"email":"a@example.com","password":"N3w!Passw0rd"}' | field '["access_token"]')
KEY=$(post /api/v1/api-keys -H "authorization: Bearer $TOKEN" -d '{"name":"ci","expires_in_days":90}' | field '["key"]')
curl -s --fail-with-body -w '\n' "$URL/api/v1/auth/me" -H "x-api-key: $KEY"   # the key is shown only once

# Organizations: create one (you own it), invite a colleague, make a custom role
ORG=$(post /api/v1/organizations -H "authorization: Bearer $TOKEN" \
  -d '{"name":"Acme","slug":"acme","settings":{"plan":"pro"}}' | field '["id"]')
post "/api/v1/organizations/$ORG/invitations" -H "authorization: Bearer $TOKEN" \
  -d '{"email":"b@example.com","roles":["admin"],"expires_in_days":7}'
post "/api/v1/organizations/$ORG/roles" -H "authorization: Bearer $TOKEN" \
  -d '{"name":"auditor","permissions":["member:read","role:read"]}'
curl -s --fail-with-body -w '\n' "$URL/api/v1/organizations/$ORG/members" -H "authorization: Bearer $TOKEN"
# the invitee signs up, verifies the address, and accepts with the token from the mailed link
post /api/v1/auth/register -d '{"email":"b@example.com","password":"B3e!Passw0rd-b"}'
post /api/v1/auth/verify-email -d "{\"token\":\"$(link_token b@example.com /verify-email)\"}"
B_TOKEN=$(post /api/v1/auth/login -d '{"email":"b@example.com","password":"B3e!Passw0rd-b"}' | field '["access_token"]')
post /api/v1/invitations/accept -H "authorization: Bearer $B_TOKEN" \
  -d "{\"token\":\"$(link_token b@example.com /accept-invitation)\"}"
curl -s --fail-with-body -w '\n' "$URL/api/v1/organizations/$ORG/members" -H "authorization: Bearer $TOKEN"
# Integrations: an outside system (a CRM) sends the organization events with its key
CRM_KEY=$(post /api/v1/integrations -H "authorization: Bearer $TOKEN" \
  -d "{\"organization_id\":\"$ORG\",\"name\":\"CRM\",\"integration_type\":\"crm\"}" | field '["secret"]')
post /api/v1/webhooks/crm -H "authorization: Bearer $CRM_KEY" -H 'webhook-id: deal-17' -d '{"deal":"won"}'
post /api/v1/auth/logout -H "authorization: Bearer $TOKEN"

# Forgotten password: a mailed link; a reset signs out every session and revokes every key
post /api/v1/auth/request-password-reset -d '{"email":"a@example.com"}'
NEW_PASSWORD='An0ther!Passw0rd'   # in single quotes: an interactive shell expands "!"
post /api/v1/auth/reset-password \
  -d "{\"token\":\"$(link_token a@example.com /reset-password)\",\"new_password\":\"$NEW_PASSWORD\"}"
# passwordless sign-in by mailed link
post /api/v1/auth/magic-link -d '{"email":"a@example.com"}'
TOKEN=$(post /api/v1/auth/magic-link/verify -d "{\"token\":\"$(link_token a@example.com /magic-link)\"}" |
  field '["access_token"]')

# Two-factor authentication: scan qr_code (or type secret) into an authenticator app
post /api/v1/totp/setup -H "authorization: Bearer $TOKEN" > totp.json
SECRET=$(field '["secret"]' < totp.json)
post /api/v1/totp/enable -H "authorization: Bearer $TOKEN" \
  -d "{\"code\":\"$(totp_code "$SECRET")\",\"password\":\"$NEW_PASSWORD\"}"
MFA=$(post /api/v1/auth/login -d '{"email":"a@example.com","password":"An0ther!Passw0rd"}' | field '["mfa_token"]')
# a code from the app, or one of the backup codes (each works once)
TOKEN=$(post /api/v1/auth/login/mfa \
  -d "{\"mfa_token\":\"$MFA\",\"code\":\"$(field '["backup_codes"][0]' < totp.json)\"}" | field '["access_token"]')

# Realtime: what happens to your account as Server-Sent Events (a WebSocket at /api/v1/ws and
# gRPC's RealtimeService/Subscribe carry the same); curl stops listening after 2 s
curl -sN --max-time 2 "$URL/api/v1/events/stream?channels=user" -H "authorization: Bearer $TOKEN" || true

# gRPC, no proto files needed (server reflection); grpcurl works the same way
$BUF curl --protocol grpc --http2-prior-knowledge -H "authorization: Bearer $TOKEN" \
  "$URL/keel.auth.v1.AuthService/GetMe"
$BUF curl --protocol grpc --http2-prior-knowledge "$URL/grpc.health.v1.Health/Check"
# gRPC-web (what browsers speak), same port
$BUF curl --protocol grpcweb -H "authorization: Bearer $TOKEN" "$URL/keel.auth.v1.AuthService/GetMe"
rm -f login.json totp.json
