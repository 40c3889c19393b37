"""Fixtures: the stubs generated once per run, and a real sessiond node (the built binary,
SESSIOND_BIN or ../../target/debug/sessiond) on a free loopback port, stopped afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import generate_stubs  # noqa: E402

generate_stubs.generate()

BINARY = Path(os.environ.get("SESSIOND_BIN", ROOT.parent.parent / "target" / "debug" / "sessiond"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """`sessiond serve` as a child process; restartable on the same ports and data. The peer
    port is chosen free too: the default (client port + 1) may belong to someone else."""

    def __init__(self, data_dir: Path, config: Optional[str] = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.config_path: Optional[Path] = None
        if config is not None:
            self.config_path = data_dir.parent / f"{data_dir.name}.toml"
            self.config_path.write_text(config)
        self.process: Optional[subprocess.Popen] = None
        self.log = (data_dir.parent / f"{data_dir.name}.log").open("ab")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [str(BINARY), "serve", "--listen", self.endpoint,
                "--peer-listen", f"127.0.0.1:{self.peer_port}", "--data-dir", str(self.data_dir),
                "--log-format", "json"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log)
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("sessiond exited before serving")
            self.log.write(line)
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "sessiond serving":
                return
        raise RuntimeError("sessiond did not serve within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `cargo build` first or set SESSIOND_BIN")
    nodes: list[Node] = []

    def make(config: Optional[str] = None) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", config)
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(make_node) -> Node:
    return make_node()
