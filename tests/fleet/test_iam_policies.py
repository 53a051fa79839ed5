"""The least-privilege IAM policies in config/iam/ allow every AWS call our code makes.

What the code needs comes from the code, twice over:

- each module that calls AWS declares the IAM actions it needs (at its top level or in a
  class): ``ACTIONS`` (every process that runs the module: the manager for actors/manager
  and actors/api, a node for the supervisor, the worker and handlers, both for a backend),
  ``MANAGER_ACTIONS`` and ``NODE_ACTIONS`` (one role only);
- the AWS operations each module actually calls are read from its source (boto3 client
  methods, ``get_paginator("...")``, and operation names such as ``"ReceiveMessage"`` handed
  to a call helper) and must be covered by what it declares.

Then each role's policy must allow each of its actions on the grid's own resources (the ARN
of a grid queue, object, group, database user), and allow nothing by wildcard action.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import botocore
import botocore.session
import pytest

REPO = Path(__file__).resolve().parents[2]
POLICIES = {
    "manager": REPO / "config/iam/manager-policy.json",
    "node": REPO / "config/iam/node-policy.json",
}
SOURCES = [REPO / "actors", REPO / "supervisor"]
#: botocore service -> IAM action prefix.
SERVICES = {
    "sqs": "sqs",
    "s3": "s3",
    "autoscaling": "autoscaling",
    "rds": "rds",
    "cloudwatch": "cloudwatch",
    "ec2": "ec2",
}
#: Operations authorised by another action than their own name (the AWS Service
#: Authorization Reference): SQS batch calls by their single form, S3 reads and lists.
AUTHORISED_BY = {
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    "sqs:DeleteMessageBatch": ("sqs:DeleteMessage",),
    "sqs:ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
    "s3:ListParts": ("s3:ListMultipartUploadParts",),
    "s3:ListMultipartUploads": ("s3:ListBucketMultipartUploads",),
    "s3:DeleteObjects": ("s3:DeleteObject",),
    "rds:GenerateDbAuthToken": ("rds-db:connect",),
}
#: boto3's own helpers: what they call on the service.
HELPERS = {
    "upload_fileobj": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "upload_file": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "download_fileobj": ("s3:GetObject",),
    "download_file": ("s3:GetObject",),
    "create_transfer_manager": ("s3:PutObject", "s3:AbortMultipartUpload", "s3:GetObject"),
    "generate_db_auth_token": ("rds-db:connect",),
}
#: An ARN of the grid's own resource each kind of action is used on.
GRID = {
    "sqs": "arn:aws:sqs:REGION:ACCOUNT_ID:GRID-tasks-dlq",
    "s3-bucket": "arn:aws:s3:::BUCKET",
    "s3-object": "arn:aws:s3:::BUCKET/PREFIX/jobs/j1/transcode/7",
    "autoscaling": (
        "arn:aws:autoscaling:REGION:ACCOUNT_ID:autoScalingGroup:"
        "0a1b2c3d-4e5f-6789-abcd-ef0123456789:autoScalingGroupName/GROUP"
    ),
    "rds-db": "arn:aws:rds-db:REGION:ACCOUNT_ID:dbuser:DB_RESOURCE_ID/DB_USER",
}
#: Actions AWS grants only on "*" (no resource-level permissions).
UNSCOPED = {
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLifecycleHooks",
    "cloudwatch:PutMetricData",
    "ec2:DescribeSpotPriceHistory",
}


@cache
def operations() -> dict[str, dict[str, str]]:
    """{service: {snake_case method or OperationName: IAM-style "prefix:OperationName"}}."""
    session = botocore.session.get_session()
    found: dict[str, dict[str, str]] = {}
    for service, prefix in SERVICES.items():
        names = session.get_service_model(service).operation_names
        table = {botocore.xform_name(name): f"{prefix}:{name}" for name in names}
        table |= {name: f"{prefix}:{name}" for name in names}
        found[service] = table
    return found


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    return "batchfarm." + ".".join(relative.parts).removesuffix(".__init__")


def called(tree: ast.AST) -> set[str]:
    """IAM-style names of the AWS operations a module's source calls."""
    tables = operations()
    calls: set[str] = set()

    def lookup(name: str) -> None:
        if name in HELPERS:
            calls.update(HELPERS[name])
            return
        for table in tables.values():
            if name in table:
                calls.add(table[name])

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            lookup(node.func.attr)
            if node.func.attr in ("get_paginator", "generate_presigned_url") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    lookup(first.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            lookup(node.func.id)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value[:1].isupper()
        ):
            # Operation names handed to a call helper: self._call("ReceiveMessage", ...).
            lookup(node.value)
    return calls


def needed(action: str) -> tuple[str, ...]:
    return AUTHORISED_BY.get(action, (action,))


#: Where a module sits says which process runs it (see ARCHITECTURE.md: the node side never
#: imports the manager's code); backends serve both unless they say otherwise.
ROLE_OF_FOLDER = {
    "actors/manager/": "manager",
    "actors/api/": "manager",
    "actors/worker/": "node",
    "actors/handlers/": "node",
    "supervisor/": "node",
}
DECLARED = ("ACTIONS", "MANAGER_ACTIONS", "NODE_ACTIONS")


def declared_in(tree: ast.Module, module: Any) -> dict[str, tuple[str, ...]]:
    """The ACTIONS constants a module declares, at its top level or in its classes."""
    found: dict[str, tuple[str, ...]] = {}
    scopes: list[tuple[list[ast.stmt], Any]] = [(tree.body, module)]
    scopes += [
        (node.body, getattr(module, node.name))
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    ]
    for body, owner in scopes:
        for node in body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id in DECLARED:
                    found[target.id] = found.get(target.id, ()) + tuple(getattr(owner, target.id))
    return found


@cache
def declarations() -> dict[str, dict[str, tuple[str, ...]]]:
    """{module: {"ACTIONS"|"MANAGER_ACTIONS"|"NODE_ACTIONS"|"calls": actions}}."""
    found: dict[str, dict[str, tuple[str, ...]]] = {}
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            source = path.read_text()
            tree = ast.parse(source, str(path))
            calls = called(tree)
            if not calls and not any(name in source for name in DECLARED):
                continue
            entry = declared_in(tree, importlib.import_module(module_name(path)))
            entry["calls"] = tuple(sorted(calls))
            found[str(path.relative_to(REPO))] = entry
    return found


def roles_of(module: str) -> set[str]:
    for folder, role in ROLE_OF_FOLDER.items():
        if module.startswith(folder):
            return {role}
    return {"manager", "node"}


def role_actions(role: str) -> dict[str, str]:
    """{IAM action: module that needs it} for a role."""
    own = "MANAGER_ACTIONS" if role == "manager" else "NODE_ACTIONS"
    return {
        action: module
        for module, entry in declarations().items()
        for action in (entry.get("ACTIONS", ()) if role in roles_of(module) else ())
        + entry.get(own, ())
    }


def policy(role: str) -> dict[str, Any]:
    return json.loads(POLICIES[role].read_text())


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**s, "Action": listed(s["Action"]), "Resource": listed(s["Resource"])}
        for s in document["Statement"]
    ]


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def resource_for(action: str) -> str:
    service, name = action.split(":")
    if service == "s3":
        on_bucket = name.startswith("ListBucket")
        return GRID["s3-bucket" if on_bucket else "s3-object"]
    return "*" if action in UNSCOPED else GRID[service]


def allows(document: dict[str, Any], action: str, resource: str) -> bool:
    verdict = False
    for statement in statements(document):
        if not any(fnmatch.fnmatchcase(action, a) for a in statement["Action"]):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in statement["Resource"]):
            continue
        if statement["Effect"] == "Deny":
            return False
        verdict = True
    return verdict


def test_the_code_declares_the_actions_of_every_call_it_makes():
    undeclared = {}
    for module, entry in declarations().items():
        declared = {a for name, acts in entry.items() if name != "calls" for a in acts}
        missing = [call for call in entry["calls"] if not set(needed(call)) <= declared]
        if missing:
            undeclared[module] = missing
    assert undeclared == {}, "calls whose IAM actions no ACTIONS constant declares"
    # The scan finds the backends (guards against a scan that finds nothing).
    assert {"actors/backends/fleet/asg.py", "actors/backends/store/engine.py"} <= set(
        declarations()
    )


@pytest.mark.parametrize("role", ["manager", "node"])
def test_each_policy_allows_what_its_role_needs_on_the_grids_resources(role):
    document = policy(role)
    refused = {
        action: module
        for action, module in role_actions(role).items()
        if not allows(document, action, resource_for(action))
    }
    assert refused == {}, f"{POLICIES[role].name} does not allow these (needed by the module)"


def test_the_node_may_not_scale_the_group_nor_open_the_store():
    node = policy("node")
    for action in (
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
        "rds-db:connect",
        "sqs:CreateQueue",
        "s3:DeleteObject",
    ):
        assert not allows(node, action, resource_for(action)), action


@pytest.mark.parametrize("role", ["manager", "node"])
def test_policies_are_valid_and_least_privilege(role):
    document = policy(role)
    assert document["Version"] == "2012-10-17"
    tables = operations()
    for statement in statements(document):
        assert statement["Effect"] in ("Allow", "Deny")
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        for action in statement["Action"]:
            service = action.partition(":")[0]
            assert "*" not in action, f"wildcard action {action}"
            if service in ("sqs", "autoscaling"):  # their IAM actions are their operations
                assert action in tables[service].values(), f"no such action {action}"
        if statement["Resource"] == ["*"]:
            assert set(statement["Action"]) <= UNSCOPED, statement["Sid"]
        else:
            for resource in statement["Resource"]:
                assert resource.startswith("arn:aws:"), resource
    assert not allows(document, "sqs:ReceiveMessage", "arn:aws:sqs:REGION:ACCOUNT_ID:other-tasks")
    assert not allows(document, "s3:GetObject", "arn:aws:s3:::BUCKET/elsewhere/x")
    assert not allows(document, "s3:GetObject", "arn:aws:s3:::OTHER-BUCKET/PREFIX/x")
