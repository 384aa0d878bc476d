"""The Registry interface on an MLflow tracking server / model registry (MlflowClient)."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kpigate.errors import Kind, kind_of_status
from kpigate.registry.base import (
    APPROVAL_TAG,
    ModelNotFound,
    ModelVersionRef,
    RegistryError,
    RegistryUnavailable,
)

_APPROVED_VALUES = frozenset({"true", "1", "yes", "approved"})
_CONNECTION_HINTS = ("Max retries exceeded", "Connection refused", "Failed to establish")
_REFUSED_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})


def probe(tracking_uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast with RegistryUnavailable if an http(s) tracking server does not answer.

    MlflowClient retries a dead server with exponential backoff for minutes; a user who mistyped
    a port deserves an answer in seconds.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        # Something answered (maybe behind a proxy that lacks /health): reachable enough.
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise RegistryUnavailable(
        f"MLflow server at {tracking_uri} is unreachable ({reason}). Start one "
        "(kpigate.registry.server.MlflowServer, or `mlflow server`) or set MLFLOW_TRACKING_URI "
        "to a running server."
    )


class MlflowRegistry:
    """kpigate's registry operations on one MLflow tracking/registry URI."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        registry_uri: str | None = None,
        check: bool = True,
    ):
        # None means what mlflow itself would use: MLFLOW_TRACKING_URI, else ./mlflow.db.
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.registry_uri = registry_uri or tracking_uri
        if check:
            probe(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    # -- errors ---------------------------------------------------------------------------

    def _translate(self, exc: MlflowException, what: str) -> RegistryError:
        message = str(exc)
        if any(hint in message for hint in _CONNECTION_HINTS):
            return RegistryUnavailable(
                f"lost the MLflow server at {self.tracking_uri} while reading {what}: "
                f"{message.splitlines()[0]}. Check that the server is running."
            )
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ModelNotFound(f"{what} does not exist in the registry at {self.registry_uri}")
        if exc.error_code in _REFUSED_CODES:
            return RegistryError(
                f"the registry at {self.registry_uri} refused the call for {what}: {message}; "
                "check the credentials (MLFLOW_TRACKING_TOKEN) and their permissions",
                kind=Kind.REFUSED,
            )
        status: int = exc.get_http_status_code()  # type: ignore[no-untyped-call]
        kind = kind_of_status(status)
        return RegistryError(f"registry call for {what} failed: {message}", kind=kind)

    def _require_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFound(
                    f"no registered model {name!r} at {self.registry_uri}; register one first "
                    "(kpigate.fraud.registration.register_model) or check the name"
                ) from None
            raise self._translate(exc, f"model {name!r}") from None

    # -- versions and aliases -------------------------------------------------------------

    def resolve(self, name: str, ref: str) -> ModelVersionRef:
        """Version by number ('3') or alias ('champion')."""
        ref = str(ref)
        try:
            if ref.isdigit():
                mv = self.client.get_model_version(name, ref)
            else:
                mv = self.client.get_model_version_by_alias(name, ref)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise self._translate(exc, f"{name}@{ref}") from None
            self._require_model(name)
            if ref.isdigit():
                raise ModelNotFound(
                    f"model {name!r} has no version {ref}; latest versions: "
                    f"{self._versions_hint(name)}"
                ) from None
            aliases = self.get_aliases(name)
            known = ", ".join(f"{a}->v{v}" for a, v in sorted(aliases.items())) or "none"
            raise ModelNotFound(
                f"model {name!r} has no alias {ref!r} (aliases: {known}); set it with "
                f"MlflowRegistry.set_alias({name!r}, {ref!r}, <version>)"
            ) from None
        return _ref(mv)

    def _versions_hint(self, name: str) -> str:
        try:
            versions = self.client.search_model_versions(f"name = '{name}'", max_results=20)
        except MlflowException:
            return "unknown"
        # MLflow's file store gives versions as int, its REST client as str: sort by number.
        numbers = sorted({int(v.version) for v in versions})
        return ", ".join(str(n) for n in numbers) or "none"

    def get_aliases(self, name: str) -> dict[str, str]:
        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                self._require_model(name)
            raise self._translate(exc, f"model {name!r}") from None
        return {str(k): str(v) for k, v in (model.aliases or {}).items()}

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.resolve(name, str(version))  # a clear error beats MLflow's for a bad version
        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException as exc:
            raise self._translate(exc, f"{name}@{alias}") from None

    def delete_alias(self, name: str, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            raise self._translate(exc, f"{name}@{alias}") from None

    # -- tags and approval ----------------------------------------------------------------

    def get_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.resolve(name, version).tags)

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        mv = self.resolve(name, version)
        try:
            self.client.set_model_version_tag(name, mv.version, key, value)
        except MlflowException as exc:
            raise self._translate(exc, f"{name} v{mv.version}") from None

    def is_approved(self, name: str, version: str, *, alias: str | None = None) -> bool:
        mv = self.resolve(name, version)
        if mv.tags.get(APPROVAL_TAG, "").strip().lower() in _APPROVED_VALUES:
            return True
        return alias is not None and alias in mv.aliases

    # -- evidence of the version's training run -------------------------------------------

    def _run_id(self, name: str, ref: str) -> str:
        mv = self.resolve(name, ref)
        if not mv.run_id:
            raise RegistryError(
                f"{name} v{mv.version} was registered without a run (source {mv.source}); "
                "metrics and artifacts live on runs, so log the model inside a run"
            )
        return mv.run_id

    def offline_metrics(self, name: str, ref: str) -> dict[str, float]:
        run_id = self._run_id(name, ref)
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except MlflowException as exc:
            raise self._translate(exc, f"run {run_id}") from None

    def params(self, name: str, ref: str) -> dict[str, str]:
        run_id = self._run_id(name, ref)
        try:
            return dict(self.client.get_run(run_id).data.params)
        except MlflowException as exc:
            raise self._translate(exc, f"run {run_id}") from None

    def input_schema(self, name: str, ref: str) -> list[dict[str, Any]]:
        from mlflow.models import Model

        mv = self.resolve(name, ref)
        with tempfile.TemporaryDirectory(prefix="kpigate-mlmodel-") as tmp:
            path = self.download_model(name, mv.version, tmp, subpath="MLmodel")
            signature = Model.load(path).signature
        if signature is None or signature.inputs is None:
            raise RegistryError(f"{name} v{mv.version} was logged without a signature")
        return list(signature.inputs.to_dict())

    def download_model(self, name: str, ref: str, dst_dir: str, *, subpath: str = "") -> str:
        """Download the version's model directory (or one file in it); returns the local path."""
        import mlflow.artifacts

        mv = self.resolve(name, ref)
        try:
            # Not a models:/ URI: MLflow resolves those against the *global* registry URI and
            # would quietly open ./mlflow.db instead of this server.
            base = self.client.get_model_version_download_uri(name, mv.version)
            uri = base.rstrip("/") + (f"/{subpath}" if subpath else "")
            return mlflow.artifacts.download_artifacts(
                artifact_uri=uri,
                dst_path=dst_dir,
                tracking_uri=self.tracking_uri,
                registry_uri=self.registry_uri,
            )
        except MlflowException as exc:
            raise self._translate(exc, f"{name} v{mv.version} model files") from None

    def log_text(self, name: str, ref: str, text: str, artifact_file: str) -> None:
        run_id = self._run_id(name, ref)
        try:
            self.client.log_text(run_id, text, artifact_file)
        except MlflowException as exc:
            raise self._translate(exc, f"run {run_id}") from None

    def log_dict(self, name: str, ref: str, data: dict[str, Any], artifact_file: str) -> None:
        # Serialised here so a value json cannot encode fails before anything is uploaded.
        self.log_text(
            name, ref, json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file
        )

    def download_artifact(self, name: str, ref: str, artifact_path: str, dst_dir: str) -> str:
        run_id = self._run_id(name, ref)
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        try:
            return self.client.download_artifacts(run_id, artifact_path, dst_dir)
        except MlflowException as exc:
            raise self._translate(exc, f"artifact {artifact_path!r} of run {run_id}") from None


def _ref(mv: ModelVersion) -> ModelVersionRef:
    return ModelVersionRef(
        name=str(mv.name),
        version=str(mv.version),
        run_id=mv.run_id or None,
        source=str(mv.source or ""),
        aliases=tuple(str(a) for a in (mv.aliases or ())),
        tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
    )
