"""Submit the progressive-delivery WorkflowTemplate through Hera's WorkflowsService."""

from __future__ import annotations

from collections.abc import Mapping

from kpigate.relay.triggers.base import TriggerError
from kpigate.workflows.submit import SubmitError, submit, workflow_for


class ArgoTrigger:
    name = "argo"

    def __init__(
        self,
        host: str,
        token: str | None,
        namespace: str,
        parameters: Mapping[str, str] | None = None,
        verify_ssl: bool = True,
    ) -> None:
        self.host, self.token, self.namespace = host, token, namespace
        self.parameters = dict(parameters or {})
        self.verify_ssl = verify_ssl

    def start(self, model_name: str, model_version: str) -> str:
        try:
            workflow = workflow_for(model_name, model_version, self.parameters)
            name, link = submit(workflow, self.host, self.token, self.namespace, self.verify_ssl)
        except SubmitError as exc:
            raise TriggerError(str(exc)) from None
        return f"{name} {link}"
