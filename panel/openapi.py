"""The OpenAPI 3.1 document of /api/v1, built from one table of operations."""

from __future__ import annotations

from typing import Any

# (method, path, summary, query parameters, request body properties or None)
OPERATIONS: list[tuple[str, str, str, list[str], dict[str, str] | None]] = [
    ("get", "/me", "The token's owner and grant", [], None),
    ("get", "/dashboard", "Services, storage, counts, seats, recent security events", [], None),
    ("get", "/domains", "Domains the token may see", [], None),
    ("post", "/domains", "Add a domain (super admins); DKIM keys are created", [], {"name": "string"}),
    ("get", "/domains/{name}", "A domain with its DKIM keys and the DNS records to publish", [], None),
    ("delete", "/domains/{name}", "Remove a domain that has no users", [], None),
    ("post", "/domains/{name}/dkim", "Create a DKIM key", [], {"selector": "string", "algorithm": "string"}),
    ("get", "/users", "Search and page users", ["domain", "q", "department", "page", "per_page"], None),
    ("post", "/users", "Add a user (a password is generated if none is given)", [],
     {"email": "string", "name": "string", "password": "string", "department_id": "integer", "title": "string",
      "phone": "string", "quota_bytes": "string"}),
    ("get", "/users/{email}", "One user", [], None),
    ("patch", "/users/{email}", "Change name, department, title, phone, quota or state (active/disabled)", [],
     {"name": "string", "department_id": "integer", "title": "string", "phone": "string", "quota_bytes": "string",
      "state": "string"}),
    ("delete", "/users/{email}", "Delete a user and erase their mail for good", [], None),
    ("post", "/users/{email}/password", "Set a password (generated if empty)", [], {"password": "string"}),
    ("post", "/users/import", "Check (and with apply, create) users from CSV; all or nothing", [],
     {"csv": "string", "apply": "boolean"}),
    ("get", "/users/export", "Users as CSV", ["domain"], None),
    ("get", "/departments", "The department tree of a domain", ["domain"], None),
    ("post", "/departments", "Add a department", [], {"domain": "string", "name": "string", "parent_id": "integer"}),
    ("patch", "/departments/{id}", "Rename or move a department", [], {"name": "string", "parent_id": "integer"}),
    ("delete", "/departments/{id}", "Delete an empty department", [], None),
    ("get", "/groups", "Groups of a domain", ["domain"], None),
    ("post", "/groups", "Add a group", [], {"email": "string", "name": "string", "post_policy": "string"}),
    ("get", "/groups/{email}", "A group and its members", [], None),
    ("patch", "/groups/{email}", "Change who may post (members, domain, anyone)", [], {"post_policy": "string"}),
    ("delete", "/groups/{email}", "Delete a group", [], None),
    ("post", "/groups/{email}/members", "Add a member (kind address or department)", [], {"kind": "string", "member": "string"}),
    ("delete", "/groups/{email}/members/{kind}/{member}", "Remove a member", [], None),
    ("get", "/aliases", "Aliases of a domain", ["domain"], None),
    ("post", "/aliases", "Add an alias", [], {"source": "string", "destination": "string"}),
    ("delete", "/aliases/{source}", "Remove an alias (one destination, or all)", ["destination"], None),
    ("get", "/admins", "Admins and their scopes", [], None),
    ("post", "/admins", "Make a user an admin", [], {"email": "string", "role": "string", "scope": "string"}),
    ("delete", "/admins/{email}", "Remove an admin role", ["role"], None),
    ("get", "/policies", "Password, 2FA, message size, rate and retention policies", [], None),
    ("put", "/policies", "Change policies (keys as returned by GET)", [], {}),
    ("get", "/logs", "Events newest first; kind signins, admin, delivery or security", ["kind", "user", "result", "since", "until", "before", "limit"], None),
    ("get", "/addressbook", "The corporate address book", ["domain", "q", "page"], None),
    ("get", "/domains/{name}/dns-check", "Live DNS status of each record to publish: ok, missing, different "
     "(with what was found), no-answer or checking; answers are cached a minute, fresh=1 asks again", ["fresh"], None),
    ("get", "/queue", "Outbound queue in the token's scope (by sender), oldest first; state is pending, deferred, "
     "failed, sent or held", ["sender", "domain", "state", "page", "per_page"], None),
    ("post", "/queue/flush", "Retry every queued message in the token's scope now", [], None),
    ("get", "/queue/{id}", "One queued message: envelope, each recipient's state, attempts, last error, next try "
     "(header fields for super admins; never the body)", [], None),
    ("delete", "/queue/{id}", "Drop a queued message without delivering or bouncing it", [], None),
    ("post", "/queue/{id}/retry", "Try to deliver a queued message now", [], None),
    ("get", "/quarantine", "Quarantined spam in the token's scope (by recipient), newest first",
     ["recipient", "sender", "page", "per_page"], None),
    ("get", "/quarantine/{id}", "One quarantined message: recipients, sender, subject, score, symbols, dates", [], None),
    ("delete", "/quarantine/{id}", "Erase a quarantined message", [], None),
    ("post", "/quarantine/{id}/release", "Deliver a quarantined message to its recipients' Inbox; 409 if none could "
     "take it", [], None),
]


# POST operations that act on something that exists (200), not create something (201)
ACTIONS = {"/queue/flush", "/queue/{id}/retry", "/quarantine/{id}/release"}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, query, body in OPERATIONS:
        params = [
            {"name": name.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
            for name in path.split("/") if name.startswith("{")
        ]
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in query]
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": method + path.replace("/", "_").replace("{", "").replace("}", ""),
            "parameters": params,
            "responses": {
                "201" if method == "post" and path not in ACTIONS else "200": {"description": "OK", "content": {"application/json": {}}},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
            },
        }
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {k: {"type": v} for k, v in body.items()},
                    "additionalProperties": not body,
                }}},
            }
        paths.setdefault("/api/v1" + path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mail appliance admin API",
            "version": "1",
            "description": "Tokens are created on the panel's API tokens page, shown once, and carry one admin "
                           "grant (super, domain, department or auditor) no wider than their creator's.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}},
        },
    }
