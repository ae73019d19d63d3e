"""Side-by-side benchmarks of yurthub against the proxies it replaces.

``python -m bench`` runs both benchmarks, each on 127.0.0.1 with its table printed and
written to ``bench/results.json``:

- `bench.proxy_list` (``python -m bench proxy-list``): a 100-pod list fetched by ``wrk``
  straight from an upstream, through nginx as kubespray's localhost apiserver proxy, and
  through yurthub;
- `bench.autonomy` (``python -m bench autonomy``): yurthub answering from its cache with
  the cloud (`bench.cloud`, the simulated kube-apiserver) stopped, next to nginx serving
  the same bytes; watch events relayed into the cache (`bench.watchclient`) next to the
  cloud's own rate; yurthub's memory; and an offline restart.

See ``bench/README.md``.
"""
