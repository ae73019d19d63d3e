"""nginx configurations: the upstream that serves the pod list, and the two proxies.

Each instance runs in the foreground (``daemon off``) under `bench.procs.Child` with its
own prefix directory, pid file, error log and temp paths, and listens on 127.0.0.1 only,
so it never touches a system nginx. Access logs are off everywhere: logging is not what
is measured.

- `upstream_conf`: stands in for kube-apiserver. ``/api/v1/pods`` is the pod list file,
  ``/readyz`` and ``/healthz`` answer 200 (yurthub probes them). Keep-alive is unlimited,
  like kube-apiserver's, so neither proxy's upstream connections get recycled.
- `http_proxy_conf`: kubespray's localhost apiserver proxy as an HTTP reverse proxy with
  upstream keep-alive (``proxy_http_version 1.1``, ``Connection ""``, ``keepalive 32``):
  the anchor row, ``nginx proxy``.
- `static_conf`: files served at given paths, ``worker_processes 1``: the anchor of the
  autonomy benchmark's offline lists (the bytes yurthub answered, served by nginx).
- `stream_proxy_conf`: kubespray's ``nginx-proxy`` role as it ships (``loadbalancer/
  nginx.conf.j2``): an L4 ``stream`` proxy with ``least_conn``; an extra row, and with
  two upstreams the failover benchmark's anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: Client-side keep-alive limits for every instance: a wrk connection is never recycled,
#: as with yurthub (twisted.web has no per-connection request limit) and kube-apiserver.
_KEEPALIVE = "keepalive_requests 1000000;\n  keepalive_timeout 300s;"


def _main(prefix: Path, name: str, workers: int | str, load_module: str = "") -> str:
    loaded = f"load_module {load_module};\n" if load_module else ""
    return f"""{loaded}daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/{name}.pid;
error_log {prefix}/{name}-error.log warn;

events {{
  worker_connections 4096;
  multi_accept on;
  use epoll;
}}
"""


def temp_dir(prefix: Path, name: str) -> Path:
    """Where instance ``name`` keeps its temp files; nginx creates only the last part of
    each temp path, so the caller creates this directory."""
    return prefix / f"{name}-temp"


def _http_common(prefix: Path, name: str) -> str:
    temp = temp_dir(prefix, name)
    return f"""access_log off;
  server_tokens off;
  tcp_nodelay on;
  {_KEEPALIVE}
  client_body_temp_path {temp}/client_body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;"""


def upstream_conf(prefix: Path, port: int, pods_file: Path, *, workers: int | str = "auto") -> str:
    """The upstream "apiserver": the pod list as a static file, plus health endpoints."""
    return (
        _main(prefix, "upstream", workers)
        + f"""
http {{
  {_http_common(prefix, "upstream")}
  sendfile on;
  tcp_nopush on;

  server {{
    listen 127.0.0.1:{port};
    location = /api/v1/pods {{
      alias {pods_file};
      types {{ }}
      default_type application/json;
    }}
    location = /readyz {{ default_type text/plain; return 200 "ok"; }}
    location = /healthz {{ default_type text/plain; return 200 "ok"; }}
    location / {{ return 404; }}
  }}
}}
"""
    )


def static_conf(prefix: Path, port: int, files: dict[str, Path], *, workers: int = 1) -> str:
    """Each file of ``files`` at its exact path (``application/json``), ``/readyz`` 200 and
    404 for the rest: the bytes another server answered, served as fast as nginx can."""
    locations = "".join(
        f"""
    location = {path} {{
      alias {file};
      types {{ }}
      default_type application/json;
    }}"""
        for path, file in files.items()
    )
    return (
        _main(prefix, "static", workers)
        + f"""
http {{
  {_http_common(prefix, "static")}
  sendfile on;
  tcp_nopush on;

  server {{
    listen 127.0.0.1:{port};{locations}
    location = /readyz {{ default_type text/plain; return 200 "ok"; }}
    location / {{ return 404; }}
  }}
}}
"""
    )


def http_proxy_conf(prefix: Path, port: int, upstream_port: int, *, workers: int = 1) -> str:
    """kubespray's localhost apiserver proxy as an HTTP reverse proxy with upstream
    keep-alive: the ``nginx proxy`` row."""
    return (
        _main(prefix, "proxy", workers)
        + f"""
http {{
  {_http_common(prefix, "proxy")}

  upstream kube_apiserver {{
    server 127.0.0.1:{upstream_port};
    keepalive 32;
  }}

  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://kube_apiserver;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 1s;
      proxy_read_timeout 10m;
    }}
  }}
}}
"""
    )


def stream_proxy_conf(
    prefix: Path,
    port: int,
    upstream_port: int | Sequence[int],
    *,
    module: str,
    workers: int = 1,
) -> str:
    """kubespray's ``nginx-proxy`` as shipped: a TCP ``stream`` proxy (one upstream
    connection per client connection, bytes copied without parsing HTTP). Several
    upstream ports are several ``server`` lines, as kubespray writes one per control-plane
    node (no ``max_fails``/``fail_timeout``: nginx's defaults, 1 and 10 s)."""
    ports = [upstream_port] if isinstance(upstream_port, int) else list(upstream_port)
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in ports)
    return (
        _main(prefix, "stream", workers, module)
        + f"""
stream {{
  upstream kube_apiserver {{
    least_conn;
    {servers}
  }}

  server {{
    listen 127.0.0.1:{port};
    proxy_pass kube_apiserver;
    proxy_timeout 10m;
    proxy_connect_timeout 1s;
  }}
}}
"""
    )


def nginx_argv(nginx: str, prefix: Path, conf: Path, name: str) -> list[str]:
    """The command line of one instance: its own prefix and config, and its own error log
    from the first line (``-e``, so the packaged ``/var/log/nginx`` is never opened)."""
    return [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / f"{name}-error.log")]
