"""The checked-in generated protobuf code matches what ``services/gen_proto.py`` makes now.

Regenerates into a temporary folder and compares bytes, so an edit to a ``.proto`` file
without regenerating (or a hand edit of generated code) fails here.
"""

from pathlib import Path

from grpc_tools.grpc_version import VERSION as TOOLS_VERSION

from services import gen_proto


def test_generated_code_is_fresh(tmp_path: Path):
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in gen_proto.generate(tmp_path)}
    checked_in = {p.relative_to(gen_proto.DEFAULT_OUT): p.read_bytes()
                  for p in gen_proto.DEFAULT_OUT.rglob("*") if p.is_file() and p.suffix in (".py", ".pyi")}
    assert sorted(fresh) == sorted(checked_in), "generated file set differs; run python scripts/gen_proto.py"
    stale = [str(name) for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, (f"{stale} differ from a fresh generation with grpcio-tools "
                       f"{TOOLS_VERSION}; run python scripts/gen_proto.py (the checked-in code may come "
                       f"from another grpcio-tools version)")


def test_generated_imports_use_the_services_package():
    from services.proto.grm.v1 import reward_pb2, reward_pb2_grpc

    assert reward_pb2.DESCRIPTOR.package == "grm.v1"
    assert "RewardService" in reward_pb2.DESCRIPTOR.services_by_name
    assert reward_pb2_grpc.RewardServiceStub is not None
