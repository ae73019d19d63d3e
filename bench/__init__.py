"""Side-by-side benchmarks of yurthub against the proxies it replaces.

``python -m bench`` (or ``python -m bench proxy-list``) runs `bench.proxy_list`: a 100-pod
list fetched by ``wrk`` straight from an upstream, through nginx as kubespray's localhost
apiserver proxy, and through yurthub, on 127.0.0.1, with the table printed and written to
``bench/results.json``. See ``bench/README.md``.
"""
