"""Side-by-side benchmarks of yurthub against the proxies it replaces.

``python -m bench`` runs four benchmarks, each on 127.0.0.1 with its table printed and
written to ``bench/results.json``, then one summary of every target (`bench.summary`) and
its chart (`bench.chart`):

- `bench.proxy_list` (``python -m bench proxy-list``): a 100-pod list fetched by ``wrk``
  straight from an upstream, through nginx as kubespray's localhost apiserver proxy, and
  through yurthub;
- `bench.autonomy` (``python -m bench autonomy``): yurthub answering from its cache with
  the cloud (`bench.cloud`, the simulated kube-apiserver) stopped, next to nginx serving
  the same bytes; watch events relayed into the cache (`bench.watchclient`) next to the
  cloud's own rate; yurthub's memory; and an offline restart;
- `bench.failover` (``python -m bench failover``): the preferred of two clouds dies under
  load, through yurthub and through kubespray's nginx-proxy;
- `bench.flowcontrol` (``python -m bench flowcontrol``): the in-flight limiter's cost, and
  a burst against a slow upstream.

See ``bench/README.md``.
"""
