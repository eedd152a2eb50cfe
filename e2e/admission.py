"""A ValidatingAdmissionPolicy that refuses one kind of request in one namespace, for as long as a test needs.

The API server evaluates the policy's CEL itself (admissionregistration.k8s.io/v1): no webhook to run.
It stands in for what refuses requests on real clusters (a quota, Gatekeeper or Kyverno, an RBAC role
missing a verb) where the emulator's tests inject a status code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kubectl import KubectlError, kubectl, poll


class Refusal:
    """Refuse ``operations`` on ``group``/``resource`` in ``namespace`` where ``expression`` is false.

    ``probe`` is a kubectl command (a server-side dry run) the policy refuses, to wait until it is in force.
    """

    def __init__(self, namespace: str, name: str, *, group: str, resource: str, operations: Sequence[str],
                 expression: str, message: str, probe: Sequence[str]) -> None:
        self.name = f"e2e-{name}-{namespace}"[:63]
        self.message = message
        self.probe = list(probe)
        policy = {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": self.name},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": {"resourceRules": [{"apiGroups": [group], "apiVersions": ["v1"],
                                                             "operations": list(operations),
                                                             "resources": [resource]}]},
                     "validations": [{"expression": expression, "message": message}]},
        }
        binding = {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": self.name},
            "spec": {"policyName": self.name, "validationActions": ["Deny"],
                     "matchResources": {"namespaceSelector": {"matchLabels": {
                         "kubernetes.io/metadata.name": namespace}}}},
        }
        self._objects = {"apiVersion": "v1", "kind": "List", "items": [policy, binding]}

    def refused(self) -> bool:
        try:
            kubectl(*self.probe, "--dry-run=server")
        except KubectlError as exc:
            return self.message in exc.stderr
        return False

    def __enter__(self) -> Refusal:
        kubectl("apply", "-f", "-", stdin=json.dumps(self._objects))
        poll(self.refused, what=f"the admission policy {self.name} in force")
        return self

    def lift(self) -> None:
        """Delete the policy and wait until requests are admitted again."""
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", self.name,
                "--ignore-not-found")
        poll(lambda: not self.refused(), what=f"the admission policy {self.name} lifted")

    def __exit__(self, *exc: object) -> None:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", self.name,
                "--ignore-not-found", check=False)
