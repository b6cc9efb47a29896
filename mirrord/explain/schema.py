"""The JSON schema of one `--explain` record (one JSON object per line)."""

from __future__ import annotations

from typing import Any

KINDS = ("file", "file.mapping", "file.result", "connect", "dns", "incoming", "env", "rule")

DECISIONS: dict[str, tuple[str, ...]] = {
    "file": ("local", "remote-read-only", "remote-read-write", "not-found"),
    "connect": ("local", "remote"),
    "dns": ("local", "remote"),
    "env": ("remote", "excluded", "env_file", "override", "mapping", "unset"),
    "incoming": ("mirror", "steal"),
}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mirrord --explain record",
    "type": "object",
    "required": ["kind", "t"],
    "properties": {
        "kind": {"enum": list(KINDS)},
        "t": {"type": "number", "description": "seconds since the session started"},
    },
    "oneOf": [
        {
            "properties": {
                "kind": {"const": "file"},
                "path": {"type": "string", "description": "the path as decided (mapped)"},
                "decision": {"enum": list(DECISIONS["file"])},
                "rule": {"type": "string"},
            },
            "required": ["path", "decision", "rule"],
        },
        {
            "properties": {
                "kind": {"const": "file.result"},
                "path": {"type": "string"},
                "result": {"type": "string", "description": "the pod's errno name (ENOENT…)"},
            },
            "required": ["path", "result"],
        },
        {
            "properties": {
                "kind": {"const": "file.mapping"},
                "path": {"type": "string", "description": "the path the program asked for"},
                "mapped": {"type": "string"},
                "rule": {"type": "string"},
            },
            "required": ["path", "mapped", "rule"],
        },
        {
            "properties": {
                "kind": {"const": "connect"},
                "protocol": {"enum": ["tcp", "udp"]},
                "destination": {"type": "string", "description": "HOST:PORT, [V6]:PORT"},
                "name": {"type": "string", "description": "the name it was resolved from"},
                "decision": {"enum": list(DECISIONS["connect"])},
                "rule": {"type": "string"},
                "result": {
                    "type": "string",
                    "description": "connected, or an errno name (ECONNREFUSED, ETIMEDOUT…)",
                },
            },
            "required": ["protocol", "destination", "decision", "rule"],
        },
        {
            "properties": {
                "kind": {"const": "dns"},
                "name": {"type": "string"},
                "decision": {"enum": list(DECISIONS["dns"])},
                "rule": {"type": "string"},
                "answers": {"type": "array", "items": {"type": "string"}},
                "result": {"type": "string"},
            },
            "required": ["name", "decision", "rule"],
        },
        {
            "properties": {
                "kind": {"const": "incoming"},
                "port": {"type": "integer"},
                "event": {
                    "enum": ["subscribed", "connection", "request-matched", "request-unmatched"]
                },
                "decision": {"enum": list(DECISIONS["incoming"])},
                "rule": {"type": "string"},
                "remote_port": {"type": "integer", "description": "after port_mapping"},
                "filter": {"type": "string"},
            },
            "required": ["port", "event", "decision", "rule"],
        },
        {
            "properties": {
                "kind": {"const": "env"},
                "name": {"type": "string"},
                "decision": {"enum": list(DECISIONS["env"])},
                "rule": {"type": "string"},
            },
            "required": ["name", "decision", "rule"],
        },
        {
            "properties": {
                "kind": {"const": "rule"},
                "rule": {"type": "string", "description": "a rule of the user's config"},
            },
            "required": ["rule"],
        },
    ],
}
