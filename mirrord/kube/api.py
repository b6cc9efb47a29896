"""The cluster connection: kubeconfig/context/in-cluster loading and raw JSON REST calls.

We go through kubernetes-asyncio's ApiClient (auth, TLS, exec plugins, token refresh) but
ask for the raw response (`_preload_content=False`) and parse JSON ourselves: the generated
model deserializer costs about a millisecond per pod, which would make `mirrord ls` on
10 000 pods take seconds longer than the network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from mirrord.kube.errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNamespaceTerminating,
    KubeNotFound,
    is_namespace_terminating,
    status_message,
)
from mirrord.kube.kubeconfig import KubeSettings as KubeSettings
from mirrord.kube.kubeconfig import kubeconfig_paths, kubeconfig_problem

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
PAGE_SIZE = 500


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    group: str  # "" for the core group
    version: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced:
            assert namespace, f"{self.plural} are namespaced"
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


def _r(kind: str, plural: str, group: str = "", version: str = "v1", ns: bool = True) -> Resource:
    return Resource(kind, plural, group, version, ns)


PODS = _r("Pod", "pods")
SERVICES = _r("Service", "services")
SECRETS = _r("Secret", "secrets")
EVENTS = _r("Event", "events")
SERVICE_ACCOUNTS = _r("ServiceAccount", "serviceaccounts")
NAMESPACES = _r("Namespace", "namespaces", ns=False)
DEPLOYMENTS = _r("Deployment", "deployments", "apps")
STATEFULSETS = _r("StatefulSet", "statefulsets", "apps")
REPLICASETS = _r("ReplicaSet", "replicasets", "apps")
DAEMONSETS = _r("DaemonSet", "daemonsets", "apps")
JOBS = _r("Job", "jobs", "batch")
CRONJOBS = _r("CronJob", "cronjobs", "batch")
ROLLOUTS = _r("Rollout", "rollouts", "argoproj.io", "v1alpha1")
RBAC = "rbac.authorization.k8s.io"
CLUSTER_ROLES = _r("ClusterRole", "clusterroles", RBAC, ns=False)
CLUSTER_ROLE_BINDINGS = _r("ClusterRoleBinding", "clusterrolebindings", RBAC, ns=False)
ROLES = _r("Role", "roles", RBAC)
ROLE_BINDINGS = _r("RoleBinding", "rolebindings", RBAC)

BY_KIND: dict[str, Resource] = {
    r.kind: r
    for r in (
        PODS, SERVICES, SECRETS, SERVICE_ACCOUNTS, NAMESPACES, DEPLOYMENTS, STATEFULSETS,
        REPLICASETS, DAEMONSETS, JOBS, CRONJOBS, ROLLOUTS, CLUSTER_ROLES,
        CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS,
    )
}  # fmt: skip


class KubeApi:
    """One authenticated connection to the API server. Use `await KubeApi.connect(...)`."""

    def __init__(
        self, api_client: Any, namespace: str, context: str | None, timeout: float
    ) -> None:
        self.client = api_client
        self.namespace = namespace  # the context's default namespace
        self.context = context
        self.timeout = timeout
        self.host: str = api_client.configuration.host
        # The kubeconfig loader when the user's credentials come from an exec plugin (EKS,
        # GKE, OIDC helpers): short-lived tokens that must be fetched again.
        self._exec_loader: Any = None
        self._reauth_lock = asyncio.Lock()
        self._credentials_generation = 0

    @classmethod
    async def connect(cls, settings: KubeSettings, environ: Mapping[str, str]) -> KubeApi:
        cfg = k8s_client.Configuration()
        paths, source = kubeconfig_paths(settings, environ)
        existing = [p for p in paths.split(":") if p and os.path.exists(p)]
        namespace = "default"
        context = settings.context
        if not existing:
            in_cluster = environ.get("KUBERNETES_SERVICE_HOST")
            if in_cluster and not settings.kubeconfig:
                try:
                    k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                except ConfigException as exc:
                    raise KubeError(f"in-cluster Kubernetes configuration: {exc}") from None
                with contextlib.suppress(OSError):
                    namespace = Path(SA_NAMESPACE_FILE).read_text().strip() or namespace
                return cls(k8s_client.ApiClient(cfg), namespace, None, settings.request_timeout)
            raise KubeError(
                f"no Kubernetes configuration: no kubeconfig at {paths} ({source}) and not "
                "running inside a cluster. Point mirrord at one (--kubeconfig, the "
                "`kubeconfig` key or KUBECONFIG), or use a local target (pid/N)"
            )
        for path in existing:
            problem = kubeconfig_problem(path)
            if problem is not None:
                raise KubeError(f"kubeconfig {path}: {problem}")
        merged = ":".join(existing)
        try:
            contexts, current = k8s_config.list_kube_config_contexts(merged)
            names = [c["name"] for c in contexts or []]
            if context is None:
                if not current:
                    raise KubeError(
                        f"the kubeconfig {merged} has no current context; choose one with "
                        f"--context or `kube_context` (contexts: {', '.join(names) or 'none'})"
                    )
                context = current["name"]
            chosen = next((c for c in contexts or [] if c["name"] == context), None)
            if chosen is None:
                raise KubeError(
                    f"context {context!r} is not in the kubeconfig {merged} "
                    f"(contexts: {', '.join(names) or 'none'})"
                )
            namespace = (chosen.get("context") or {}).get("namespace") or namespace
            loader = await k8s_config.load_kube_config(
                config_file=merged, context=context, client_configuration=cfg, persist_config=False
            )
            if settings.insecure:
                cfg.verify_ssl = False
            exec_loader = loader if "exec" in (loader._user or {}) else None
        except ConfigException as exc:
            raise KubeError(f"kubeconfig {merged}: {exc}") from None
        except KubeError:
            raise
        except Exception as exc:
            # for files it cannot use (TypeError, AssertionError, ... on odd shapes).
            raise KubeError(
                f"kubeconfig {merged}: not a usable kubeconfig ({type(exc).__name__}: {exc}); "
                "check it with `kubectl config view`"
            ) from None
        api = cls(k8s_client.ApiClient(cfg), namespace, context, settings.request_timeout)
        if exec_loader is not None:
            api._exec_loader = exec_loader
            cfg.refresh_api_key_hook = api._refresh_if_expiring
        return api

    # -- exec-plugin credentials

    async def _refresh_if_expiring(self, cfg: Any) -> None:
        """Before each request (REST and port-forward): a plugin token that said when it
        expires is fetched again from 5 minutes before that (kubernetes-asyncio's skew).
        One without an expiry is kept until the API server refuses it (reauthenticate)."""
        loader = self._exec_loader
        if getattr(loader, "exec_plugin_expiry", None) is None:
            return
        async with self._reauth_lock:
            await loader.load_from_exec_plugin()  # runs the plugin only if expiring
            cfg.api_key["BearerToken"] = loader.token

    async def reauthenticate(self, generation: int) -> bool:
        """After a 401: run the exec plugin again, as kubectl does. `generation` is
        `credentials_generation` as it was when the refused request was sent, so that
        concurrent refusals run the plugin once. False: no plugin, nothing to refresh."""
        loader = self._exec_loader
        if loader is None:
            return False
        async with self._reauth_lock:
            if generation == self._credentials_generation:
                with contextlib.suppress(AttributeError):
                    del loader.exec_plugin_expiry  # else it would keep the refused token
                try:
                    await loader.load_from_exec_plugin()
                except Exception as exc:
                    raise KubeError(
                        f"the API server refused our credentials (401) and running the "
                        f"kubeconfig's exec plugin again failed: {exc}"
                    ) from None
                self.client.configuration.api_key["BearerToken"] = loader.token
                self._credentials_generation += 1
            return True

    @property
    def credentials_generation(self) -> int:
        return self._credentials_generation

    async def close(self) -> None:
        await self.client.close()

    # -- raw REST

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        what: tuple[str, str, str | None] | None = None,
    ) -> dict[str, Any]:
        """One call; the parsed JSON body. `what` = (verb, resource, namespace) for errors;
        404 raises KubeNotFound (callers that expect it say what was missing)."""
        generation = self._credentials_generation
        status, data = await self._call(method, path, query, body)
        if status == 401 and await self.reauthenticate(generation):
            status, data = await self._call(method, path, query, body)
        if 200 <= status < 300:
            return json.loads(data) if data else {}
        verb, resource, namespace = what or (method.lower(), path, None)
        detail = status_message(data)
        if status == 401:
            plugin = " (the exec plugin's new token too)" if self._exec_loader else ""
            raise KubeError(
                f"the API server at {self.host} rejected our credentials{plugin} (401 "
                f"Unauthorized: {detail}); refresh them (e.g. your cloud CLI's "
                f"get-credentials) or check the user of context {self.context}"
            )
        if status == 403 and is_namespace_terminating(data):
            raise KubeNamespaceTerminating(namespace, detail)
        if status == 403:
            raise KubeForbidden(verb, resource, namespace, detail)
        if status == 404:
            raise KubeNotFound(detail)
        if status == 409:
            raise KubeConflict(detail)
        raise KubeError(f"{verb} {resource}: the API server answered {status}: {detail}")

    async def _call(
        self, method: str, path: str, query: list[tuple[str, str]] | None, body: Any
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        try:
            resp = await self.client.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            data: bytes = await resp.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise KubeError(
                f"the Kubernetes API server at {self.host} has a certificate we do not trust "
                f"({exc.certificate_error}). The kubeconfig's cluster needs its CA "
                "(certificate-authority or certificate-authority-data); to skip the check "
                "(not on a network you do not trust): -c / accept_invalid_certificates"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise KubeError(
                f"cannot reach the Kubernetes API server at {self.host}: {exc}. Is the cluster "
                f"up, and is the context ({self.context or 'in-cluster'}) the right one?"
            ) from None
        except TimeoutError:
            raise KubeError(
                f"the Kubernetes API server at {self.host} did not answer {method} {path} "
                f"within {self.timeout:g}s"
            ) from None
        return int(resp.status), data

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.request(
            "GET", res.path(namespace, name), what=("get", res.plural, namespace)
        )

    async def list_pages(
        self,
        res: Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of items, following `continue` tokens (each page is one request)."""
        token: str | None = None
        while True:
            query = [("limit", str(limit))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            page = await self.request(
                "GET", res.path(namespace), query=query, what=("list", res.plural, namespace)
            )
            yield list(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    async def list(
        self,
        res: Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for page in self.list_pages(
            res, namespace, label_selector=label_selector, field_selector=field_selector
        ):
            items.extend(page)
        return items

    async def create(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj.get("metadata", {}).get("namespace") if res.namespaced else None
        return await self.request("POST", res.path(ns), body=obj, what=("create", res.plural, ns))

    async def replace(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata", {})
        ns = meta.get("namespace") if res.namespaced else None
        return await self.request(
            "PUT", res.path(ns, meta["name"]), body=obj, what=("update", res.plural, ns)
        )

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> bool:
        """Delete (background propagation); False if it did not exist."""
        try:
            await self.request(
                "DELETE",
                res.path(namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1",
                      "propagationPolicy": "Background"},
                what=("delete", res.plural, namespace),
            )  # fmt: skip
        except KubeNotFound:
            return False
        return True


async def wait_until(deadline: float, interval: float = 0.2) -> None:
    """Sleep one polling interval, bounded by the deadline (loop time)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, min(interval, deadline - loop.time())))
