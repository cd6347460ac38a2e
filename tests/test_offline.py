"""The suite runs offline: the guard is installed here and in child processes, and it refuses the network."""
import socket
import subprocess
import sys

import pytest
import sitecustomize as guard


def test_guard_is_installed_in_this_process():
    assert socket.socket.connect is guard.guarded_connect
    assert socket.socket.connect_ex is guard.guarded_connect_ex


@pytest.mark.parametrize("address, ok", [
    (("127.0.0.1", 80), True), (("::1", 80), True), (("localhost", 80), True), ("/tmp/kernel.sock", True),
    (("192.0.2.1", 443), False), (("huggingface.co", 443), False), (("10.0.0.1", 80), False),
])
def test_policy(address, ok):
    assert guard.allowed(address) is ok


def test_outbound_connect_is_refused_before_any_packet():
    with socket.socket() as s, pytest.raises(guard.NetworkBlocked, match="blocked while testing"):
        s.connect(("192.0.2.1", 443))  # TEST-NET-1: documentation-only address
    with pytest.raises(guard.NetworkBlocked):
        socket.getaddrinfo("huggingface.co", 443)


def test_child_processes_inherit_the_guard_and_offline_hub():
    code = ("import socket, os, sitecustomize as g; assert socket.socket.connect is g.guarded_connect; "
            "print(os.environ['HF_HUB_OFFLINE'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
