"""The network face of the GRM: gRPC server, micro-batching scheduler, cache and clients.

    from services.client import RewardClient          # talk to a running service
    from services.server import create_server          # serve a GenerativeRewardModel

Imports flow one way: ``services -> grm``; the command line that starts a server is
``grm serve`` (``grm_cli/``). The generated protobuf code lives in ``services/proto``
(made by ``python scripts/gen_proto.py``).
"""
