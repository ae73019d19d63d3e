"""Tests for yurthub/config.py: schema, defaults, validation messages, overrides."""

from __future__ import annotations

import os

import yaml
from twisted.trial.unittest import SynchronousTestCase

from yurthub.config import (
    KNOWN_FILTERS,
    Config,
    ConfigError,
    describe,
    load_config,
    parse_config,
)

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "etc", "yurthub", "yurthub.yaml")


class ParseConfigTests(SynchronousTestCase):
    """Valid documents become frozen dataclasses with DESIGN.md's defaults."""

    def test_minimal_document_gets_the_documented_defaults(self) -> None:
        config = parse_config({"nodeName": "edge-1", "servers": ["https://10.0.0.10:6443"]})
        self.assertEqual(config.node_name, "edge-1")
        self.assertEqual(config.servers, ("https://10.0.0.10:6443",))
        self.assertEqual(config.load_balancing, "rr")
        self.assertEqual(config.listen.proxy, "tcp:10261:interface=127.0.0.1")
        self.assertEqual(config.listen.secure_proxy, "tcp:10268:interface=127.0.0.1")
        self.assertEqual(config.listen.hub, "tcp:10267:interface=127.0.0.1")
        self.assertEqual(config.health_check.interval_seconds, 10)
        self.assertEqual(config.health_check.timeout_seconds, 2)
        self.assertEqual((config.health_check.healthy_threshold, config.health_check.unhealthy_threshold), (2, 1))
        self.assertEqual(config.flow_control.max_requests_in_flight, 250)
        self.assertTrue(config.flow_control.exempt_long_running)
        self.assertEqual(config.cache.dir, "/var/lib/yurthub/cache")
        self.assertIn("kubelet", config.cache.agents)
        self.assertEqual(config.certificates.mode, "token")
        self.assertEqual(config.tenant.namespaces, ())
        self.assertEqual(config.filters, KNOWN_FILTERS)
        self.assertEqual((config.logging.level, config.logging.format), ("info", "text"))

    def test_config_is_frozen(self) -> None:
        config = parse_config({"servers": ["https://a:6443"]})
        with self.assertRaises(AttributeError):
            config.node_name = "x"  # type: ignore[misc]

    def test_server_urls_are_normalised_with_default_ports(self) -> None:
        config = parse_config({"servers": ["https://api.example.com", "http://127.0.0.1:8080/", "https://[::1]:6443"]})
        self.assertEqual(config.servers, ("https://api.example.com:443", "http://127.0.0.1:8080", "https://[::1]:6443"))
        self.assertEqual(config.insecure_servers, ("http://127.0.0.1:8080",))

    def test_node_name_defaults_to_the_host_name(self) -> None:
        config = parse_config({"servers": ["https://a:6443"]})
        self.assertTrue(config.node_name)

    def test_the_shipped_sample_is_valid_and_documents_every_key(self) -> None:
        config = load_config(SAMPLE)
        self.assertIsInstance(config, Config)
        with open(SAMPLE) as f:
            document = yaml.safe_load(f)
        for section in ("listen", "healthCheck", "flowControl", "cache", "certificates", "tenant", "logging"):
            self.assertIn(section, document)
        self.assertEqual(set(document["certificates"]) >= {"mode", "bootstrapToken", "caCertHashes", "caFile"}, True)


class ValidationTests(SynchronousTestCase):
    """Every kind of bad input names the key in one line."""

    cases = [
        ({"servers": []}, "servers", "at least one"),
        ({}, "servers", "required"),
        ({"servers": "https://a"}, "servers", "must be a list"),
        ({"servers": ["ftp://a"]}, "servers", "https://"),
        ({"servers": ["https://"]}, "servers", "no host"),
        ({"servers": ["https://a:99999"]}, "servers", "not a valid URL"),
        ({"servers": ["https://a/path"]}, "servers", "scheme://host"),
        ({"servers": ["https://a"], "loadBalancing": "random"}, "loadBalancing", "rr, priority"),
        ({"servers": ["https://a"], "nodeName": "Edge_1"}, "nodeName", "DNS subdomain"),
        ({"servers": ["https://a"], "listen": {"proxy": "tcp:notaport"}}, "listen.proxy", "endpoint"),
        ({"servers": ["https://a"], "listen": {"proxy": "nope:1"}}, "listen.proxy", "endpoint"),
        ({"servers": ["https://a"], "listen": {"other": "tcp:1"}}, "listen.other", "unknown key"),
        ({"servers": ["https://a"], "listen": "tcp:1"}, "listen", "mapping"),
        ({"servers": ["https://a"], "healthCheck": {"intervalSeconds": 0}}, "healthCheck.intervalSeconds", "> 0"),
        ({"servers": ["https://a"], "healthCheck": {"healthyThreshold": 1.5}}, "healthCheck.healthyThreshold", "whole"),
        ({"servers": ["https://a"], "flowControl": {"maxRequestsInFlight": "many"}}, "flowControl.maxRequestsInFlight", "whole"),
        ({"servers": ["https://a"], "flowControl": {"exemptLongRunning": "yes"}}, "flowControl.exemptLongRunning", "true or false"),
        ({"servers": ["https://a"], "flowControl": {"maxRequestsInFlight": -1}}, "flowControl.maxRequestsInFlight", ">= 0"),
        ({"servers": ["https://a"], "flowControl": {"maxConnections": 0}}, "flowControl.maxConnections", ">= 1"),
        ({"servers": ["https://a"], "flowControl": {"requestHeadTimeoutSeconds": 0}}, "flowControl.requestHeadTimeoutSeconds", "> 0"),
        ({"servers": ["https://a"], "flowControl": {"maxHeaderBytes": "1MB"}}, "flowControl.maxHeaderBytes", "whole"),
        ({"servers": ["https://a"], "cache": {"agents": ["kubelet", 3]}}, "cache.agents", "string"),
        ({"servers": ["https://a"], "certificates": {"mode": "magic"}}, "certificates.mode", "token, kubelet"),
        ({"servers": ["https://a"], "certificates": {"bootstrapToken": "short"}}, "certificates.bootstrapToken", "bootstrap token"),
        ({"servers": ["https://a"], "certificates": {"caCertHashes": ["md5:aa"]}}, "certificates.caCertHashes", "sha256"),
        ({"servers": ["https://a"], "certificates": {"certFile": "/x"}}, "certificates.keyFile", "together"),
        ({"servers": ["https://a"], "tenant": {"namespaces": ["Bad NS"]}}, "tenant.namespaces", "namespace"),
        ({"servers": ["https://a"], "filters": ["nosuch"]}, "filters", "one of"),
        ({"servers": ["https://a"], "logging": {"format": "xml"}}, "logging.format", "text, json"),
        ({"servers": ["https://a"], "srevers": []}, "srevers", "unknown key"),
        (["a list"], "", "mapping"),
    ]

    def test_each_bad_value_names_its_key(self) -> None:
        for document, key, words in self.cases:
            with self.assertRaises(ConfigError, msg=repr(document)) as caught:
                parse_config(document, "/etc/yurthub/yurthub.yaml")
            message = str(caught.exception)
            self.assertEqual(caught.exception.key, key, message)
            self.assertIn(words, message)
            self.assertTrue(message.startswith("/etc/yurthub/yurthub.yaml: "), message)
            self.assertNotIn("\n", message)


class LoadConfigTests(SynchronousTestCase):
    """Reading the file, YAML errors and command-line overrides."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_missing_file_is_one_line(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config("/nonexistent/yurthub.yaml")
        self.assertIn("/nonexistent/yurthub.yaml: no such file", str(caught.exception))

    def test_missing_file_allowed_when_not_required(self) -> None:
        config = load_config("/nonexistent/yurthub.yaml", {"servers": ["https://a:1"]}, required=False)
        self.assertEqual(config.servers, ("https://a:1",))

    def test_yaml_syntax_error_gives_the_line(self) -> None:
        path = self.write("servers: [https://a\nnodeName: x\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn("YAML syntax error at line", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_overrides_replace_single_keys(self) -> None:
        path = self.write("servers: [https://a:6443]\ncache: {dir: /a, agents: [kubelet]}\n")
        config = load_config(path, {"cache.dir": "/b", "servers": ["https://b:6443", "https://c:6443"], "loadBalancing": "priority"})
        self.assertEqual(config.cache.dir, "/b")
        self.assertEqual(config.cache.agents, ("kubelet",))
        self.assertEqual(config.servers, ("https://b:6443", "https://c:6443"))
        self.assertEqual(config.load_balancing, "priority")

    def test_bad_override_is_reported_with_its_key(self) -> None:
        path = self.write("servers: [https://a:6443]\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, {"loadBalancing": "nope"})
        self.assertEqual(caught.exception.key, "loadBalancing")

    def test_warnings_for_plain_http_and_non_loopback(self) -> None:
        config = parse_config({"servers": ["http://a:1"], "listen": {"hub": "tcp:10267"}})
        warnings = describe(config)
        self.assertTrue(any("plain HTTP" in w for w in warnings))
        self.assertTrue(any("listen.hub" in w for w in warnings))
