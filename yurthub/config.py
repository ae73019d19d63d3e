"""yurthub's configuration: the YAML file and command-line overrides, as frozen dataclasses.

`load_config` reads ``/etc/yurthub/yurthub.yaml`` (or another path), applies single-key
overrides given on the command line, validates every value and returns a `Config`. Anything
wrong raises `ConfigError`, whose message is one line naming the file and the key
(``/etc/yurthub/yurthub.yaml: healthCheck.intervalSeconds: must be a number > 0, got 'x'``),
so ``twistd yurthub`` can stop with that line and no traceback. Unknown keys are errors too:
a typo must never be silently ignored on a node nobody is watching.

The key names in the file are the camelCase ones of DESIGN.md; the dataclass fields are their
snake_case spellings.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

DEFAULT_CONFIG_PATH = "/etc/yurthub/yurthub.yaml"

#: The response filters yurthub knows; the filters issue implements them.
KNOWN_FILTERS = (
    "masterservice",
    "servicetopology",
    "discardcloudservice",
    "inclusterconfig",
    "nodeportisolation",
)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_CA_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is one line naming the source and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


@dataclass(frozen=True)
class ListenConfig:
    """Twisted server endpoint strings for the three listeners; ``""`` disables one."""

    proxy: str = "tcp:10261:interface=127.0.0.1"
    secure_proxy: str = "tcp:10268:interface=127.0.0.1"
    hub: str = "tcp:10267:interface=127.0.0.1"


@dataclass(frozen=True)
class HealthCheckConfig:
    """How often and how strictly each cloud backend is probed."""

    interval_seconds: float = 10.0
    timeout_seconds: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 1
    #: Priority mode: how long a preferred backend must have been healthy again before
    #: watches on a lower one are moved to it (each at a random moment up to 1.5x this).
    return_grace_seconds: float = 60.0


@dataclass(frozen=True)
class FlowControlConfig:
    """The node-wide limit on requests in flight, and the limits on client connections.

    ``max_requests_in_flight`` 0 turns the request limit off. The connection limits guard
    the proxy listeners only (never the hub listener): ``max_connections`` open at once
    (more are closed as they arrive), ``idle_timeout_seconds`` between two requests,
    ``request_head_timeout_seconds`` for a whole request line and headers to arrive (a
    client sending a byte every few seconds is cut), and the sizes a request head may have.
    """

    max_requests_in_flight: int = 250
    exempt_long_running: bool = True
    max_connections: int = 4096
    idle_timeout_seconds: float = 120.0
    request_head_timeout_seconds: float = 10.0
    max_request_line_bytes: int = 32 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


@dataclass(frozen=True)
class CacheConfig:
    """Where the object cache lives and whose reads it keeps (``"*"``: every component)."""

    dir: str = "/var/lib/yurthub/cache"
    agents: tuple[str, ...] = ("kubelet", "kube-proxy", "flanneld", "coredns", "yurthub")


@dataclass(frozen=True)
class CertificatesConfig:
    """The node's credentials towards the cloud.

    ``ca_file``, ``cert_file`` and ``key_file`` name PEM files used as they are (the cluster
    CA, and the client certificate and key yurthub presents upstream). Without
    ``cert_file``, mode ``token`` has the certificate manager bootstrap and rotate one in
    ``dir`` (with ``bootstrap_token``, ``ca_cert_hashes``; ``organizations`` are added to
    its subject, ``serving_ips`` to the serving certificate's names), and mode ``kubelet``
    uses kubelet's ``kubelet_cert_file`` (certificate and key in one file).
    """

    dir: str = "/var/lib/yurthub/pki"
    mode: str = "token"
    bootstrap_token: str = ""
    ca_cert_hashes: tuple[str, ...] = ()
    unsafe_skip_ca_verification: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    serving_cert_file: str = ""
    serving_key_file: str = ""
    organizations: tuple[str, ...] = ()
    serving_ips: tuple[str, ...] = ()
    kubelet_cert_file: str = "/var/lib/kubelet/pki/kubelet-client-current.pem"


@dataclass(frozen=True)
class TenantConfig:
    """Tenant isolation: a non-empty list limits what the node sees to these namespaces.

    ``cluster_resources`` names the cluster-scoped resources (``group/resource``, or
    ``resource`` for the core group) a tenant node still sees, besides its own Node and
    the tenant's Namespaces."""

    namespaces: tuple[str, ...] = ()
    cluster_resources: tuple[str, ...] = (
        "authentication.k8s.io/tokenreviews",
        "authorization.k8s.io/subjectaccessreviews",
        "node.k8s.io/runtimeclasses",
        "storage.k8s.io/csidrivers",
    )


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format (``text`` or ``json``)."""

    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    """The whole validated configuration of one yurthub process."""

    node_name: str
    servers: tuple[str, ...]
    load_balancing: str = "rr"
    listen: ListenConfig = field(default_factory=ListenConfig)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    flow_control: FlowControlConfig = field(default_factory=FlowControlConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    certificates: CertificatesConfig = field(default_factory=CertificatesConfig)
    tenant: TenantConfig = field(default_factory=TenantConfig)
    filters: tuple[str, ...] = KNOWN_FILTERS
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def insecure_servers(self) -> tuple[str, ...]:
        """The ``http://`` servers: allowed for labs and tests, worth a warning."""
        return tuple(s for s in self.servers if s.startswith("http://"))


#: YAML spellings that do not follow from plain camel-casing.
_SPELLINGS = {"unsafe_skip_ca_verification": "unsafeSkipCAVerification", "serving_ips": "servingIPs"}


def camel(name: str) -> str:
    """The YAML spelling of a dataclass field name (``node_name`` -> ``nodeName``)."""
    if name in _SPELLINGS:
        return _SPELLINGS[name]
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


# --- value checkers: each returns the normalised value or raises _Bad(problem) ---


class _Bad(Exception):
    pass


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_type_name(value)} {value!r}")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {value!r}")
    return value


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _Bad(f"must be a number > 0, got {value!r}")
    return float(value)


def _ip_address(value: object) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise _Bad(f"must be an IP address, got {value!r}") from None


def _non_negative_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _Bad(f"must be a number >= 0, got {value!r}")
    return float(value)


def _non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"must be a whole number >= 0, got {value!r}")
    return value


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(f"must be a whole number >= 1, got {value!r}")
    return value


def _one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    return check


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _string(value)
        if text and not pattern.match(text):
            raise _Bad(f"must be {what}, got {text!r}")
        return text

    return check


def _node_name(value: object) -> str:
    text = _string(value)
    if not text or len(text) > 253 or not _DNS_SUBDOMAIN.match(text):
        raise _Bad(f"must be a DNS subdomain name (lower-case, 1-253 characters), got {text!r}")
    return text


def _server_url(value: object) -> str:
    text = _string(value)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise _Bad(f"{text!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https"):
        raise _Bad(f"{text!r} must start with https:// (or http:// for labs)")
    if not parts.hostname:
        raise _Bad(f"{text!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise _Bad(f"{text!r} must be scheme://host[:port] only")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}:{port or default_port}"


#: What endpoint validation hands `serverFromString` as the reactor.
_UNUSED_REACTOR = object()


def _endpoint(value: object) -> str:
    text = _string(value)
    if text == "":
        return text
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsed only: the endpoint built keeps the reactor it is given and never uses it
        # here (twisted.internet.testing's MemoryReactor would import trial at start-up).
        serverFromString(_UNUSED_REACTOR, text)
    except Exception as e:  # the parser raises ValueError, KeyError, TypeError...
        raise _Bad(f"{text!r} is not a Twisted server endpoint string ({e})") from None
    return text


_T = TypeVar("_T")


def _list_of(check: Callable[[object], _T], *, non_empty: bool = False) -> Callable[[object], tuple[_T, ...]]:
    def checker(value: object) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise _Bad(f"must be a list, got {_type_name(value)} {value!r}")
        if non_empty and not value:
            raise _Bad("must list at least one entry")
        out = []
        for index, item in enumerate(value):
            try:
                out.append(check(item))
            except _Bad as e:
                raise _Bad(f"entry {index}: {e}") from None
        return tuple(out)

    return checker


def _namespace(value: object) -> str:
    text = _string(value)
    if not text or len(text) > 63 or not _DNS_LABEL.match(text):
        raise _Bad(f"must be a namespace name (DNS label), got {text!r}")
    return text


def _cluster_resource(value: object) -> str:
    text = _string(value)
    group, _, resource = text.rpartition("/")
    if not resource or not _DNS_LABEL.match(resource) or (group and not _DNS_SUBDOMAIN.match(group)):
        raise _Bad(f"must be group/resource (or resource for the core group), e.g. storage.k8s.io/csidrivers, got {text!r}")
    if not group and resource in ("nodes", "namespaces"):
        raise _Bad(f"{resource} are shown by tenant rules (own Node, tenant Namespaces), not the allowlist")
    return text


def _agent(value: object) -> str:
    text = _string(value).strip().lower()
    if not text or "/" in text:
        raise _Bad(f"must be a component name such as kubelet or '*', got {value!r}")
    return text


# Each section: dataclass, and per YAML key the checker for its value.
_SECTIONS: dict[str, tuple[type, dict[str, Callable[[object], Any]]]] = {
    "listen": (
        ListenConfig,
        {"proxy": _endpoint, "secureProxy": _endpoint, "hub": _endpoint},
    ),
    "healthCheck": (
        HealthCheckConfig,
        {
            "intervalSeconds": _positive_number,
            "timeoutSeconds": _positive_number,
            "healthyThreshold": _positive_int,
            "unhealthyThreshold": _positive_int,
            "returnGraceSeconds": _non_negative_number,
        },
    ),
    "flowControl": (
        FlowControlConfig,
        {
            "maxRequestsInFlight": _non_negative_int,
            "exemptLongRunning": _boolean,
            "maxConnections": _positive_int,
            "idleTimeoutSeconds": _positive_number,
            "requestHeadTimeoutSeconds": _positive_number,
            "maxRequestLineBytes": _positive_int,
            "maxHeaderBytes": _positive_int,
            "maxHeaders": _positive_int,
        },
    ),
    "cache": (CacheConfig, {"dir": _string, "agents": _list_of(_agent)}),
    "certificates": (
        CertificatesConfig,
        {
            "dir": _string,
            "mode": _one_of("token", "kubelet"),
            "bootstrapToken": _matching(_BOOTSTRAP_TOKEN, "a bootstrap token [a-z0-9]{6}.[a-z0-9]{16}"),
            "caCertHashes": _list_of(_matching(_CA_HASH, "sha256:<64 hex digits>")),
            "unsafeSkipCAVerification": _boolean,
            "caFile": _string,
            "certFile": _string,
            "keyFile": _string,
            "servingCertFile": _string,
            "servingKeyFile": _string,
            "organizations": _list_of(_string),
            "servingIPs": _list_of(_ip_address),
            "kubeletCertFile": _string,
        },
    ),
    "tenant": (TenantConfig, {"namespaces": _list_of(_namespace), "clusterResources": _list_of(_cluster_resource)}),
    "logging": (
        LoggingConfig,
        {"level": _one_of("debug", "info", "warn", "error"), "format": _one_of("text", "json")},
    ),
}

_TOP_LEVEL: dict[str, Callable[[object], Any]] = {
    "nodeName": _node_name,
    "servers": _list_of(_server_url, non_empty=True),
    "loadBalancing": _one_of("rr", "priority"),
    "filters": _list_of(_one_of(*KNOWN_FILTERS)),
}


def _build_section(source: str, name: str, data: object) -> object:
    cls, checkers = _SECTIONS[name]
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(source, name, f"must be a mapping, got {_type_name(data)} {data!r}")
    by_yaml = {camel(f.name): f.name for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in checkers:
            raise ConfigError(source, f"{name}.{key}", f"unknown key (known: {', '.join(checkers)})")
        try:
            values[by_yaml[key]] = checkers[key](value)
        except _Bad as e:
            raise ConfigError(source, f"{name}.{key}", str(e)) from None
    return cls(**values)


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate a decoded YAML document and build the `Config`.

    ``source`` names the document in error messages. A missing ``nodeName`` defaults to
    this host's name; ``servers`` is required.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"the document must be a mapping of keys, got {_type_name(data)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(source, str(key), "keys must be strings")
        if key in _SECTIONS:
            values[key] = _build_section(source, key, value)
        elif key in _TOP_LEVEL:
            try:
                values[key] = _TOP_LEVEL[key](value)
            except _Bad as e:
                raise ConfigError(source, key, str(e)) from None
        else:
            known = ", ".join([*_TOP_LEVEL, *_SECTIONS])
            raise ConfigError(source, key, f"unknown key (known: {known})")
    if "servers" not in values:
        raise ConfigError(source, "servers", "required: list at least one cloud API server URL")
    if "nodeName" not in values:
        try:
            values["nodeName"] = _node_name(socket.gethostname().lower())
        except _Bad as e:
            raise ConfigError(source, "nodeName", f"not set and the host name is unusable: {e}") from None
    by_yaml = {camel(f.name): f.name for f in fields(Config)}
    config = Config(**{by_yaml[k]: v for k, v in values.items()})
    _check_consistency(config, source)
    return config


def _check_consistency(config: Config, source: str) -> None:
    certs = config.certificates
    if bool(certs.cert_file) != bool(certs.key_file):
        raise ConfigError(
            source,
            "certificates.keyFile" if certs.cert_file else "certificates.certFile",
            "certFile and keyFile go together",
        )
    if bool(certs.serving_cert_file) != bool(certs.serving_key_file):
        missing = "servingKeyFile" if certs.serving_cert_file else "servingCertFile"
        raise ConfigError(source, f"certificates.{missing}", "servingCertFile and servingKeyFile go together")
    if not config.cache.dir:
        raise ConfigError(source, "cache.dir", "must not be empty")


def check_value(key: str, value: object, source: str = "<request>") -> Any:
    """Check ``value`` as the file's dotted ``key`` (``servers``,
    ``certificates.bootstrapToken``) is checked; the normalised value, or `ConfigError`
    naming ``key``. For input that does not come from the file (``PUT /v1/cluster``)."""
    section, _, name = key.rpartition(".")
    checker = _SECTIONS[section][1][name] if section else _TOP_LEVEL[name]
    try:
        return checker(value)
    except _Bad as e:
        raise ConfigError(source, key, str(e)) from None


def set_key(document: dict[str, Any], dotted_key: str, value: object) -> None:
    """Set ``a.b`` in a decoded YAML document, creating the section if needed."""
    *sections, last = dotted_key.split(".")
    node = document
    for section in sections:
        child = node.get(section)
        if not isinstance(child, dict):
            child = node[section] = {}
        node = child
    node[last] = value


def load_config(
    path: str = DEFAULT_CONFIG_PATH,
    overrides: Mapping[str, object] | None = None,
    *,
    required: bool = True,
) -> Config:
    """Read, override and validate the configuration.

    ``overrides`` maps dotted YAML keys (``"cache.dir"``, ``"servers"``) to values that
    replace the file's. With ``required=False`` a missing file is treated as empty (so a
    node can be configured from the command line alone).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(path, "", "no such file (choose another with --config)") from None
        text = ""
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, "", f"YAML syntax error at {where}{problem}") from None
    if document is None:
        document = {}
    if overrides:
        if not isinstance(document, dict):
            raise ConfigError(path, "", "the document must be a mapping of keys")
        for key, value in overrides.items():
            set_key(document, key, value)
    source = path if overrides is None or not overrides else f"{path} (with command-line overrides)"
    return parse_config(document, source)


def describe(config: Config) -> Sequence[str]:
    """Warnings worth a log line at start-up (plain-HTTP servers, listeners off loopback)."""
    warnings = [
        f"server {s} is plain HTTP: requests and credentials cross the network unencrypted"
        for s in config.insecure_servers
    ]
    for name in ("proxy", "secure_proxy", "hub"):
        value = getattr(config.listen, name)
        if value and not _loopback_only(value):
            warnings.append(f"listen.{camel(name)} {value!r} is not bound to loopback")
    return warnings


def _loopback_only(description: str) -> bool:
    """Whether a listener endpoint can be reached from this node only: a TCP or SSL one
    bound to a loopback address (``interface=127.0.0.1``, ``interface=\\:\\:1``), or a
    UNIX socket. No ``interface=`` means every address."""
    import ipaddress

    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    if parts[0] == "unix":
        return True
    for part in parts[1:]:
        if part.startswith("interface="):
            try:
                ip = ipaddress.ip_address(part[len("interface=") :])
            except ValueError:
                return False
            mapped = getattr(ip, "ipv4_mapped", None)
            return ip.is_loopback or (mapped is not None and mapped.is_loopback)
    return False
