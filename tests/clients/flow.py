"""A first flow through the client that `openapi-python-client` generates from Keel's served
/openapi.json (package `keel_client`): register, sign in, create an organization, list its
members. Run by tests/it/clients.rs: python flow.py BASE_URL EMAIL."""

import sys

from keel_client import AuthenticatedClient, Client
from keel_client.api.auth_service import auth_service_get_me, auth_service_login, auth_service_register
from keel_client.api.organization_service import (
    organization_service_create_organization,
    organization_service_list_members,
)
from keel_client.models import (
    KeelAuthV1LoginRequest,
    KeelAuthV1RegisterRequest,
    KeelOrganizationV1CreateOrganizationRequest,
    KeelOrganizationV1ListMembersResponse,
    KeelOrganizationV1Organization,
    KeelUserV1User,
)

base_url, email = sys.argv[1], sys.argv[2]
password = "correct horse battery staple"

anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)
registered = auth_service_register.sync(
    client=anonymous, body=KeelAuthV1RegisterRequest(email=email, password=password, full_name="Py Client")
)
assert isinstance(registered, KeelUserV1User), registered
assert registered.email == email

tokens = auth_service_login.sync(client=anonymous, body=KeelAuthV1LoginRequest(email=email, password=password))
assert tokens.token_type == "bearer", tokens
client = AuthenticatedClient(base_url=base_url, token=tokens.access_token, raise_on_unexpected_status=True)

me = auth_service_get_me.sync(client=client)
assert me.id == registered.id, me

organization = organization_service_create_organization.sync(
    client=client, body=KeelOrganizationV1CreateOrganizationRequest(name="Py Corp", slug="py-corp")
)
assert isinstance(organization, KeelOrganizationV1Organization), organization

members = organization_service_list_members.sync(organization_id=organization.id, client=client)
assert isinstance(members, KeelOrganizationV1ListMembersResponse), members
assert [(member.email, member.roles) for member in members.members] == [(email, ["owner"])], members
print("python client flow: ok")
