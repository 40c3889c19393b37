"""Generates the gRPC stubs (with type stubs) of ../../proto into src/sessiond/.

Run before building or testing: `python generate_stubs.py` (needs grpcio-tools).
"""

from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "src"
FILES = ["sessiond/v1/session.proto", "sessiond/v1/cluster.proto"]


def generate() -> None:
    """Writes src/sessiond/v1/{session,cluster}_pb2{,_grpc}.py(i)."""
    include = Path(protoc.__file__).resolve().parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{include}",
            f"--python_out={OUT}",
            f"--pyi_out={OUT}",
            f"--grpc_python_out={OUT}",
            *(str(PROTO / f) for f in FILES),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    for package in (OUT / "sessiond", OUT / "sessiond" / "v1"):
        (package / "__init__.py").touch()


if __name__ == "__main__":
    generate()
