"""Parent-shared device templates: read-only copies that follow their owner."""

from __future__ import annotations

from app.runtime.platform import Platform
from tests.conftest import Api, World, assert_denied

CREATE = """mutation($i: DeviceTemplateInput!) { createDeviceTemplate(input: $i) { id version readOnly } }"""
LIST = "{ deviceTemplates { id name type fragments series version readOnly ownerTenantId sharedWith } }"


async def test_shared_templates_are_read_only_copies_that_follow_the_owner(api: Api, world: World,
                                                                           platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    chosen, other = await world.tenant(ent), await world.tenant(ent)
    created = await api.gql(CREATE, {"i": {"name": "thermostat", "type": "c8y_Thermostat",
                                           "fragments": {"fw": "1.0"}, "series": ["temperature"]}},
                            token=ent.token, tenant=ent.id)
    template = created.data["createDeviceTemplate"]["id"]
    published = await api.gql("mutation($id: ID!, $t: [ID!]!) { publishDeviceTemplate(id: $id, tenantIds: $t) "
                              "{ sharedWith } }", {"id": template, "t": [chosen.id]}, token=ent.token, tenant=ent.id)
    assert published.data["publishDeviceTemplate"]["sharedWith"] == [chosen.id]

    seen = (await api.gql(LIST, token=chosen.token, tenant=chosen.id)).data["deviceTemplates"]
    assert seen == [{"id": template, "name": "thermostat", "type": "c8y_Thermostat", "fragments": {"fw": "1.0"},
                     "series": ["temperature"], "version": 1, "readOnly": True, "ownerTenantId": ent.id,
                     "sharedWith": []}]
    assert (await api.gql(LIST, token=other.token, tenant=other.id)).data["deviceTemplates"] == []
    edit = await api.gql('mutation($id: ID!) { updateDeviceTemplate(id: $id, input: {name: "mine"}) { id } }',
                         {"id": template}, token=chosen.token, tenant=chosen.id)
    assert edit.code == "FORBIDDEN"
    assert (await api.gql('mutation($id: ID!) { updateDeviceTemplate(id: $id, input: {name: "x"}) { id } }',
                          {"id": template}, token=other.token, tenant=other.id)).code == "NOT_FOUND"

    device = await api.gql('mutation($t: ID!) { createDevice(input: {name: "d", templateId: $t, '
                           'fragments: {site: "hall"}}) { type fragments } }', {"t": template}, token=chosen.token,
                           tenant=chosen.id)
    assert device.data["createDevice"] == {"type": "c8y_Thermostat", "fragments": {"fw": "1.0", "site": "hall"}}

    await api.gql('mutation($id: ID!) { updateDeviceTemplate(id: $id, input: {fragments: {fw: "2.0"}}) { id } }',
                  {"id": template}, token=ent.token, tenant=ent.id)
    followed = (await api.gql(LIST, token=chosen.token, tenant=chosen.id)).data["deviceTemplates"][0]
    assert (followed["version"], followed["fragments"]) == (2, {"fw": "2.0"})

    # The copy lives in the child's schema, written only by the sync: another tenant's role can't see it.
    await assert_denied(platform, other.id, f"SELECT * FROM t_{chosen.id}.shared_templates")

    await api.gql("mutation($id: ID!) { withdrawDeviceTemplate(id: $id) }", {"id": template}, token=ent.token,
                  tenant=ent.id)
    assert (await api.gql(LIST, token=chosen.token, tenant=chosen.id)).data["deviceTemplates"] == []


async def test_templates_are_shared_only_with_the_owners_descendants(api: Api, world: World) -> None:
    ent, stranger = await world.tenant(kind="ENTERPRISE"), await world.tenant()
    child = await world.tenant(ent)
    template = (await api.gql(CREATE, {"i": {"name": "t", "type": "x"}}, token=ent.token,
                              tenant=ent.id)).data["createDeviceTemplate"]["id"]
    publish = "mutation($id: ID!, $t: [ID!]!) { publishDeviceTemplate(id: $id, tenantIds: $t) { sharedWith } }"
    assert (await api.gql(publish, {"id": template, "t": [stranger.id]}, token=ent.token,
                          tenant=ent.id)).code == "NOT_FOUND"
    # The child does not even know the (not yet shared) template.
    assert (await api.gql(publish, {"id": template, "t": [child.id]}, token=child.token,
                          tenant=child.id)).code == "NOT_FOUND"
    assert (await api.gql(CREATE, {"i": {"name": "", "type": "x"}}, token=ent.token,
                          tenant=ent.id)).code == "INVALID_INPUT"
    partial = await api.gql(publish, {"id": template, "t": [child.id]}, token=ent.token, tenant=ent.id)
    assert partial.data["publishDeviceTemplate"]["sharedWith"] == [child.id]
    await api.gql("mutation($id: ID!, $t: [ID!]) { withdrawDeviceTemplate(id: $id, tenantIds: $t) }",
                  {"id": template, "t": [child.id]}, token=ent.token, tenant=ent.id)
    owner_view = (await api.gql(LIST, token=ent.token, tenant=ent.id)).data["deviceTemplates"]
    assert owner_view[0]["sharedWith"] == []
