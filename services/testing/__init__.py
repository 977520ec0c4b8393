"""Real processes that the tests and the benchmarks both start: one home, imported by both.

- ``redis_servers``: ``RedisServer`` (one ``redis-server``) and ``RedisClusterServers`` (a
  3-master, 3-replica cluster) on free loopback ports; ``free_port``.
- ``llama_server``: ``LlamaServer`` (a ``llama-server`` process), ``llama_cpp_dir`` (the
  cached build) and ``gguf_of`` (a checkpoint converted once).
- ``serve_process``: ``ServeProcess``, ``grm serve --port 0`` as a subprocess.
- ``flood``: two callers on one server by bearer token, a flooder and a polite one.

The pytest fixtures over them stay in ``tests/services`` (``redis_fixtures``,
``llama_fixtures``); like ``grm.testing``, nothing here imports pytest.
"""
