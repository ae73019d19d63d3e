"""Tenant isolation: the node sees only its tenant's namespaces.

Three parts:

- `TenantFilter`, a stage of the filter chain for every component's get, list and watch
  answers, live and cached: it keeps objects of the tenant's namespaces, and of
  cluster-scoped ones only the node's own Node, the tenant's Namespaces and the resources
  of the ``tenant.clusterResources`` allowlist. Hidden objects are absent: list items
  dropped, a get answered 404, watch events dropped (never turned into DELETED, which
  would name them), Table rows without an object dropped.
- `TenantGuard`, the request-side rules, before anything goes upstream or to the cache:
  a request addressing another namespace by name (get, create, update, patch, delete,
  subresources such as logs or exec) is a 404 ``NotFound`` worded as kube-apiserver words
  absence; a cluster-scoped object outside what is visible likewise; a deletecollection
  across namespaces, or a create of a cluster-scoped resource outside the allowlist, is a
  403. Lists and watches in other namespaces or across all go up and come back filtered
  (empty), exactly like lists of a namespace that does not exist.
- `TenantTokens`: a bearer token of a ``kube-system`` service account (read from the
  token's claims) is replaced by a token of the tenant's ``default`` service account,
  obtained by a TokenRequest made with the node's credentials and kept until 80 % of its
  life has passed. Without one the request is refused with a 403 ``Status``; it is never
  sent with an empty or the original token.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from yurthub.filters.chain import READ_VERBS, Filter, JSONDict, meta
from yurthub.interfaces import IFailoverFactory
from yurthub.kube.meta import parse_timestamp
from yurthub.proxy.remote import BytesProducer
from yurthub.proxy.status import finish_with_status
from yurthub.requestinfo import RequestInfo

_log = Logger()

#: Cluster-scoped resources a tenant node sees by default: what kubelet needs to run and
#: to authenticate and authorise callers of its own API ("group/resource", core group "").
DEFAULT_CLUSTER_RESOURCES = (
    "authentication.k8s.io/tokenreviews",
    "authorization.k8s.io/subjectaccessreviews",
    "node.k8s.io/runtimeclasses",
    "storage.k8s.io/csidrivers",
)

#: Longest life asked for a tenant token; renewed at 80 % of the life it got.
TOKEN_SECONDS = 3600


def resource_id(group: str, resource: str) -> str:
    """How a resource is named in ``tenant.clusterResources``: ``group/resource``, or just
    ``resource`` for the core group."""
    return f"{group}/{resource}" if group else resource


class Tenant:
    """What one tenant node may see."""

    def __init__(self, namespaces: Sequence[str], node_name: str, cluster_resources: Sequence[str]) -> None:
        self.namespaces = frozenset(namespaces)
        self.token_namespace = namespaces[0]
        self.node_name = node_name
        self.cluster_resources = frozenset(cluster_resources)

    def visible_cluster_object(self, group: str, resource: str, name: str) -> bool:
        if group == "" and resource == "nodes":
            return name == self.node_name
        if group == "" and resource == "namespaces":
            return name in self.namespaces
        return resource_id(group, resource) in self.cluster_resources

    def visible(self, obj: JSONDict, info: RequestInfo) -> bool:
        m = meta(obj)
        namespace = m.get("namespace")
        if namespace:
            return namespace in self.namespaces
        if info.resource == "namespaces" and not info.api_group:
            return m.get("name") in self.namespaces
        if info.namespace:  # a namespaced object that does not say its namespace
            return info.namespace in self.namespaces
        return self.visible_cluster_object(info.api_group, info.resource, str(m.get("name", "")))


class TenantFilter(Filter):
    """The filter-chain stage of tenant isolation (every component, every resource)."""

    name = "tenant"
    hides = True

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant

    def applies(self, info: RequestInfo) -> bool:
        return info.is_resource_request and info.verb in READ_VERBS and info.subresource in ("", "status")

    def apply(self, obj: JSONDict, info: RequestInfo) -> JSONDict | None:
        return obj if self.tenant.visible(obj, info) else None


def _token_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def service_account_namespace(token: str) -> str:
    """The namespace of the service account a token claims to be (unverified; "" if it is
    not a service-account token)."""
    claims = _token_claims(token)
    bound = claims.get("kubernetes.io")
    if isinstance(bound, dict) and isinstance(bound.get("namespace"), str):
        return str(bound["namespace"])
    legacy = claims.get("kubernetes.io/serviceaccount/namespace")
    if isinstance(legacy, str):
        return legacy
    sub = claims.get("sub")
    if isinstance(sub, str) and sub.startswith("system:serviceaccount:"):
        return sub.split(":")[2]
    return ""


class TokenUnavailable(Exception):
    """The tenant's default service-account token cannot be had now (``unreachable``: the
    cloud could not be asked at all)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class TenantTokens:
    """The tenant's ``default`` service-account token, from a TokenRequest made with the
    node's credentials; renewed once 80 % of its life has passed."""

    def __init__(self, clock: IReactorTime, failover: IFailoverFactory, agent: Any, namespace: str) -> None:
        self._clock = clock
        self._failover = failover
        self._agent = agent
        self.namespace = namespace
        self._token = ""
        self._renew_at = 0.0
        self._expires_at = 0.0
        self._waiters: list[defer.Deferred[str]] = []

    @property
    def cached(self) -> str:
        """The token while it is still valid, else ""."""
        return self._token if self._clock.seconds() < self._expires_at else ""

    def get(self) -> defer.Deferred[str]:
        """A valid token (from memory while fresh); fails with `TokenUnavailable`. One
        TokenRequest at a time, whoever asks."""
        if self._token and self._clock.seconds() < self._renew_at:
            return defer.succeed(self._token)
        d: defer.Deferred[str] = defer.Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:
            defer.ensureDeferred(self._request()).addBoth(self._settle)
        return d

    def _settle(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        cached = self.cached
        for d in waiters:
            if not isinstance(result, Failure):
                d.callback(result)
            elif cached:  # renewal failed but the old token is still valid
                d.callback(cached)
            else:
                d.errback(result)

    async def _request(self) -> str:
        backend = self._failover.attempts(None).next()
        if backend is None:
            raise TokenUnavailable("the cloud is unreachable", unreachable=True)
        target = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/default/token".encode()
        body = json.dumps({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "spec": {"expirationSeconds": TOKEN_SECONDS},
        }).encode()
        headers = Headers({
            b"user-agent": [b"yurthub/tenant"],
            b"accept": [b"application/json"],
            b"content-type": [b"application/json"],
        })
        try:
            response = await self._agent.request_to(backend, b"POST", target, headers, BytesProducer(body))
            answer = await readBody(response)
        except Exception as e:
            raise TokenUnavailable(f"the token request failed: {e}") from None
        if response.code != 201 and response.code != 200:
            raise TokenUnavailable(f"the token request was answered {response.code}")
        try:
            status = json.loads(answer)["status"]
            token = str(status["token"])
            expires = parse_timestamp(str(status.get("expirationTimestamp") or ""))
        except (ValueError, KeyError, TypeError):
            raise TokenUnavailable("the token request's answer has no token") from None
        if not token:
            raise TokenUnavailable("the token request's answer has an empty token")
        now = self._clock.seconds()
        life = (expires - now) if expires is not None else TOKEN_SECONDS
        life = max(1.0, min(life, TOKEN_SECONDS))
        self._token = token
        self._renew_at = now + 0.8 * life
        self._expires_at = now + life
        return token


def _what(info: RequestInfo) -> str:
    return f"{info.resource}.{info.api_group}" if info.api_group else info.resource


class TenantGuard:
    """The request-side rules of tenant isolation (see the module docstring)."""

    def __init__(self, tenant: Tenant, tokens: TenantTokens | None) -> None:
        self.tenant = tenant
        self.tokens = tokens

    def admit(
        self,
        request: Request,
        info: RequestInfo,
        proceed: Callable[[], None],
        offline: Callable[[Request, RequestInfo, str], None],
    ) -> None:
        """Answer ``request`` here (404/403) or call ``proceed`` once it may go on (now, or
        after the tenant token was fetched). With no tenant token because the cloud is
        unreachable, ``offline`` answers it (from the cache: no token goes anywhere)."""
        if info.is_resource_request and not self._allowed(request, info):
            return
        if self.tokens is not None:
            token = _bearer(request)
            if token and service_account_namespace(token) == "kube-system":
                self._swap(request, info, proceed, offline)
                return
        proceed()

    def _allowed(self, request: Request, info: RequestInfo) -> bool:
        tenant = self.tenant
        verb = info.verb
        if info.namespace:
            if info.namespace in tenant.namespaces:
                return True
            if verb in ("list", "watch") and not info.subresource:
                return True  # goes up and comes back empty, as for a missing namespace
            if info.resource == "namespaces" and not info.api_group and not info.subresource and verb == "get":
                finish_with_status(request, 404, f'namespaces "{info.namespace}" not found', "NotFound")
            elif info.name and verb != "create":
                finish_with_status(request, 404, f'{_what(info)} "{info.name}" not found', "NotFound")
            else:
                finish_with_status(request, 404, f'namespaces "{info.namespace}" not found', "NotFound")
            return False
        if verb in ("list", "watch"):
            return True  # filtered on the way back
        if verb == "deletecollection":
            finish_with_status(request, 403, "deletecollection across namespaces is not allowed on a tenant node", "Forbidden")
            return False
        if info.name:
            if tenant.visible_cluster_object(info.api_group, info.resource, info.name):
                return True
            finish_with_status(request, 404, f'{_what(info)} "{info.name}" not found', "NotFound")
            return False
        if resource_id(info.api_group, info.resource) in tenant.cluster_resources:
            return True
        finish_with_status(request, 403, f"{verb} of {_what(info)} is not allowed on a tenant node", "Forbidden")
        return False

    def _swap(
        self,
        request: Request,
        info: RequestInfo,
        proceed: Callable[[], None],
        offline: Callable[[Request, RequestInfo, str], None],
    ) -> None:
        assert self.tokens is not None
        d = self.tokens.get()

        def swapped(token: str) -> None:
            if getattr(request, "_disconnected", False) or request.finished:
                return
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + token.encode()])
            proceed()

        def failed(failure: Any) -> None:
            if getattr(request, "_disconnected", False) or request.finished:
                return
            if failure.check(TokenUnavailable) and failure.value.unreachable:
                offline(request, info, "the cloud is unreachable")
                return
            _log.warn("no token of {ns}/default to replace a kube-system token: {err}",
                      ns=self.tokens.namespace if self.tokens else "", err=failure.getErrorMessage())
            finish_with_status(
                request,
                403,
                f"kube-system service-account tokens are replaced by the token of "
                f"{self.tenant.token_namespace}/default on this tenant node, and that token is "
                f"not available: {failure.getErrorMessage()}",
                "Forbidden",
            )

        d.addCallbacks(swapped, failed)
        d.addErrback(lambda f: _log.failure("tenant token swap failed", f))


def _bearer(request: Request) -> str:
    value = request.getHeader(b"authorization") or b""
    if value[:7].lower() != b"bearer ":
        return ""
    return value[7:].strip().decode("latin-1")
