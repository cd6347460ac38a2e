"""Block the network in every Python process the tests start (notebook kernels included).

tests/conftest.py puts this folder on PYTHONPATH, so Python imports this module at start-up.
Loopback and Unix sockets stay open: Jupyter kernels talk to pytest over them.
"""
import ipaddress
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkBlocked(ConnectionRefusedError):
    """The test suite refuses connections that would leave this machine."""


def allowed(address) -> bool:
    if isinstance(address, (str, bytes)):  # a Unix socket path
        return True
    host = address[0].decode() if isinstance(address[0], bytes) else address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: refuse it


def _guard(address):
    if not allowed(address):
        raise NetworkBlocked(f"network access to {address!r} is blocked while testing: nothing may download")


def guarded_connect(self, address):
    _guard(address)
    return _real_connect(self, address)


def guarded_connect_ex(self, address):
    _guard(address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, _real=socket.getaddrinfo, **kwargs):
    if host is not None and not allowed((host, 0)):
        raise NetworkBlocked(f"name lookup of {host!r} is blocked while testing: nothing may download")
    return _real(host, *args, **kwargs)


socket.socket.connect = guarded_connect
socket.socket.connect_ex = guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
