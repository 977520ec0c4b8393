"""The network face of the GRM: gRPC server, micro-batching scheduler, cache, client, CLI.

    from services.client import RewardClient          # talk to a running service
    from services.server import create_server          # serve a GenerativeRewardModel

Imports flow one way: ``services -> grm``. The generated protobuf code lives in
``services/proto`` (made by ``python -m services.gen_proto``).
"""
