"""Custom resources through the `kubernetes` client: get and patch one named object."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from kpigate.backends.base import BackendError, BackendSettings, check_percent
from kpigate.backends.patching import Patch, Resource
from kpigate.errors import Kind, kind_of_status

FIELD_MANAGER = "kpigate"


@dataclass(frozen=True)
class ResourceKind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def default_api() -> Any:
    """A CustomObjectsApi from the pod's service account, else from the local kubeconfig."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as exc:
            raise BackendError(
                "no Kubernetes credentials: run inside a pod with a service account "
                f"(see manifests/rbac/) or point KUBECONFIG at a kubeconfig ({exc})",
                kind=Kind.BAD_INPUT,
            ) from None
    return client.CustomObjectsApi()


class CustomResource:
    """One named custom object; every change is a patch, optionally a server-side dry run."""

    def __init__(
        self, kind: ResourceKind, namespace: str, name: str, api: Any, dry_run: bool = False
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.api = api
        self.dry_run = dry_run

    def _where(self) -> str:
        kind = self.kind
        return f"{kind.kind} {self.namespace}/{self.name} ({kind.plural}.{kind.group})"

    def get(self) -> Resource:
        try:
            obj = self.api.get_namespaced_custom_object(
                self.kind.group, self.kind.version, self.namespace, self.kind.plural, self.name
            )
        except Exception as exc:
            raise self._explain("read", exc) from None
        if not isinstance(obj, dict):
            raise BackendError(
                f"{self._where()}: the API server returned {type(obj).__name__}",
                kind=Kind.UNAVAILABLE,
            )
        return obj

    def patch(self, patch: Patch) -> Resource | None:
        """Send the patch unless it is empty (nothing to change: calls stay idempotent)."""
        if not patch.body:
            return None
        try:
            result = self.api.patch_namespaced_custom_object(
                self.kind.group,
                self.kind.version,
                self.namespace,
                self.kind.plural,
                self.name,
                patch.body,
                dry_run="All" if self.dry_run else None,
                field_manager=FIELD_MANAGER,
                _content_type=patch.content_type,
            )
        except Exception as exc:
            raise self._explain("patch", exc) from None
        return result if isinstance(result, dict) else None

    def _explain(self, verb: str, exc: Exception) -> BackendError:
        status = getattr(exc, "status", None)
        detail = _server_message(getattr(exc, "body", None)) or str(exc)
        where = self._where()
        if status == 404:
            return BackendError(
                f"{where} not found: check the namespace and resource name "
                f"(workflow arguments backend-namespace and backend-resource). {detail}",
                kind=Kind.BAD_INPUT,
            )
        if status in (401, 403):
            return BackendError(
                f"not allowed to {verb} {where}: the service account needs get and patch on "
                f"{self.kind.plural}.{self.kind.group} (manifests/rbac/). {detail}",
                kind=Kind.REFUSED,
            )
        if status in (409, 422) and verb == "patch":
            return BackendError(
                f"{where} changed while kpigate was updating it, or the change is invalid; "
                f"the step is safe to retry. {detail}",
                kind=Kind.UNAVAILABLE,
            )
        if status is None:
            return BackendError(
                f"cannot reach the Kubernetes API to {verb} {where}: {detail}",
                kind=Kind.UNAVAILABLE,
            )
        return BackendError(
            f"{verb} {where} failed (HTTP {status}): {detail}", kind=kind_of_status(status)
        )


def _server_message(body: Any) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:300]
    return str(data.get("message")) if isinstance(data, dict) and "message" in data else None


class KubernetesBackend(ABC):
    """A traffic backend whose state lives in one custom resource.

    Subclasses supply the pure parts (resource in, weight or patch out); this class reads the
    resource, computes the patch from what it read, and sends it.
    """

    KIND: ClassVar[ResourceKind]

    def __init__(self, settings: BackendSettings, api: Any = None) -> None:
        self.settings = settings
        self.object = CustomResource(
            self.KIND,
            settings.resolved_namespace(),
            settings.require_resource(),
            default_api() if api is None else api,
            dry_run=settings.dry_run,
        )

    @abstractmethod
    def read_weight(self, resource: Resource) -> float: ...

    @abstractmethod
    def weight_patch(self, resource: Resource, percent: float) -> Patch: ...

    @abstractmethod
    def mirror_patch(self, resource: Resource, on: bool) -> Patch: ...

    @abstractmethod
    def detach_patch(self, resource: Resource) -> Patch: ...

    def get_weight(self) -> float:
        return self.read_weight(self.object.get())

    def set_weight(self, percent: float) -> None:
        percent = check_percent(percent)
        self.object.patch(self.weight_patch(self.object.get(), percent))

    def set_mirror(self, on: bool) -> None:
        self.object.patch(self.mirror_patch(self.object.get(), on))

    def detach(self) -> None:
        self.object.patch(self.detach_patch(self.object.get()))
