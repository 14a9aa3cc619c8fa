# Schemathesis hooks of the contract run (tools/contract/run.sh sets SCHEMATHESIS_HOOKS to this
# file). They give every generated request a real access token, got the way a client system
# gets one: `linkbridge demo token` signs a client assertion with the demo client's key and calls
# the server's token endpoint (SMART Backend Services).
#
# Access tokens live at most 300 seconds (src/auth/access_token.rs MAX_LIFETIME_SECS), which a
# run may outlast, so a static `Authorization` header is not enough: the providers below fetch a
# new token every REFRESH_SECS, and schemathesis fetches one again on a 401 (its `retry_on`
# default).
import os
import subprocess

import schemathesis
from schemathesis.specs.openapi import checks as builtin_checks

BINARY = os.environ["LB_CONTRACT_BINARY"]
DATA_DIR = os.environ["LB_CONTRACT_DATA_DIR"]
SERVER = os.environ["LB_CONTRACT_SERVER"]
REFRESH_SECS = 120


def demo_token(client_id: str) -> str:
    done = subprocess.run(
        [BINARY, "--data-dir", DATA_DIR, "demo", "token", client_id, "--server", SERVER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`demo token {client_id}` failed: {done.stderr.strip()}")
    return done.stdout.strip()


def bearer(case, token: str) -> None:
    case.headers = dict(case.headers or {})
    case.headers["Authorization"] = f"Bearer {token}"


# The operator's endpoints (the audit trail, the outbox status) with an operator token, so their
# 200 answers are checked too; a GP token only ever gets their 403. The first provider whose
# filter matches wins, so this one comes first.
@schemathesis.auth(refresh_interval=REFRESH_SECS).apply_to(tag="Operator")
class OperatorToken:
    def get(self, case, context):
        return demo_token("demo-operator")

    def set(self, case, data, context):
        bearer(case, data)


# Everything else as the demo GP practice (referrer, ODS DEMOGP1, system/*.cruds): the party that
# creates referrals, so its creates, reads and searches reach the server's rules and its data.
@schemathesis.auth(refresh_interval=REFRESH_SECS).skip_for(tag="Operator")
class GpToken:
    def get(self, case, context):
        return demo_token("demo-gp")

    def set(self, case, data, context):
        bearer(case, data)


# `Prefer: return=minimal` (R4 http.html#ops, the `Prefer` parameter of every write in the spec):
# a successful create, update or patch then answers with no body and so no Content-Type.
# OpenAPI cannot say that a response body is optional, so schemathesis' content_type_conformance
# and response_schema_conformance would call that empty answer a missing Content-Type and
# invalid JSON. These two checks are those built-in checks with exactly that case let through:
# a 200 or 201 whose request asked for return=minimal and whose body is empty. Everything else
# (including a return=minimal answer that does have a body) is checked as the built-ins would.
# schemathesis.toml enables them in place of the built-ins.
def minimal_write_answer(response) -> bool:
    prefer = ",".join(v for k, v in response.request.headers.items() if k.lower() == "prefer")
    asked = any(token.strip() == "return=minimal" for token in prefer.split(","))
    return asked and response.status_code in (200, 201) and not response.content


@schemathesis.check
def fhir_content_type_conformance(ctx, response, case):
    if minimal_write_answer(response):
        return None
    return builtin_checks.content_type_conformance(ctx, response, case)


@schemathesis.check
def fhir_response_schema_conformance(ctx, response, case):
    if minimal_write_answer(response):
        return None
    return builtin_checks.response_schema_conformance(ctx, response, case)
